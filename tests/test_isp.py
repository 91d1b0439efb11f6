"""Camera math in jisp.isp: Bayer mosaic/demosaic/packing, tone curves, UPI unprocessing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.isp import bayer, tone
from jisp.isp import unprocess as up

RNG = np.random.default_rng(0)
# Rectangular, not a multiple of 4, so row/column mix-ups and parity slips show.
H, W = 10, 14
RGB = RNG.uniform(0.0, 1.0, (H, W, 3)).astype(np.float32)


def _site_colours(pattern, h, w):
  return np.tile(bayer.channel_index(pattern), (h // 2, w // 2))


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_channel_index_and_mask(pattern):
  idx = bayer.channel_index(pattern)
  assert "RGB"[idx[0, 0]] + "RGB"[idx[0, 1]] + "RGB"[idx[1, 0]] + "RGB"[idx[1, 1]] == pattern
  m = bayer.cfa_mask(pattern, H, W)
  assert m.shape == (H, W, 3)
  np.testing.assert_array_equal(m.sum(-1), 1.0)
  np.testing.assert_array_equal(m.argmax(-1), _site_colours(pattern, H, W))


def test_bad_pattern_rejected():
  with pytest.raises(ValueError, match="RGBG"):
    bayer.channel_index("RGBG")


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_mosaic_keeps_cfa_colour(pattern):
  m = np.asarray(bayer.mosaic(RGB, pattern))
  cols = _site_colours(pattern, H, W)
  expect = np.take_along_axis(RGB, cols[..., None], axis=-1)[..., 0]
  np.testing.assert_array_equal(m, expect)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_demosaic_exact_on_cfa_sites_and_mosaic_identity(pattern):
  m = bayer.mosaic(RGB, pattern)
  d = np.asarray(bayer.demosaic_bilinear(m, pattern))
  assert d.shape == (H, W, 3) and d.dtype == np.float32
  mask = bayer.cfa_mask(pattern, H, W) > 0
  np.testing.assert_array_equal(d[mask], np.broadcast_to(np.asarray(m)[..., None], d.shape)[mask])
  np.testing.assert_array_equal(np.asarray(bayer.mosaic(d, pattern)), np.asarray(m))


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_demosaic_interpolates_missing_sites(pattern):
  # Hand-written bilinear reference at every pixel; borders use mirror padding (pixel -1 is
  # pixel 1), which keeps the CFA lattice, so the same neighbour rules hold at the edges.
  m = np.asarray(bayer.mosaic(RGB, pattern), np.float64)
  d = np.asarray(bayer.demosaic_bilinear(m, pattern))
  mp = np.pad(m, 1, mode="reflect")
  cols = np.pad(_site_colours(pattern, H, W), 1, mode="reflect")
  for y in range(1, H + 1):
    for x in range(1, W + 1):
      c = cols[y, x]
      got = d[y - 1, x - 1]
      if c != 1:  # green at R/B sites: mean of the 4-neighbours
        g = (mp[y - 1, x] + mp[y + 1, x] + mp[y, x - 1] + mp[y, x + 1]) / 4
        np.testing.assert_allclose(got[1], g, rtol=1e-6)
        # the other of R/B sits on the diagonals
        diag = (mp[y - 1, x - 1] + mp[y - 1, x + 1] + mp[y + 1, x - 1] + mp[y + 1, x + 1]) / 4
        np.testing.assert_allclose(got[2 - c], diag, rtol=1e-6)
      else:  # R/B at green sites: mean of the two same-colour neighbours on row or column
        np.testing.assert_allclose(got[cols[y, x - 1]], (mp[y, x - 1] + mp[y, x + 1]) / 2,
                                   rtol=1e-6)
        np.testing.assert_allclose(got[cols[y - 1, x]], (mp[y - 1, x] + mp[y + 1, x]) / 2,
                                   rtol=1e-6)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_demosaic_recovers_linear_ramp(pattern):
  h, w = 32, 48
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  ramp = np.stack([0.1 + 0.01 * xx + 0.005 * yy,
                   0.2 + 0.004 * xx + 0.012 * yy,
                   0.9 - 0.006 * xx - 0.008 * yy], -1).astype(np.float32)
  d = np.asarray(bayer.demosaic_bilinear(bayer.mosaic(ramp, pattern), pattern))
  # Bilinear interpolation is exact for affine images away from the border.
  np.testing.assert_allclose(d[1:-1, 1:-1], ramp[1:-1, 1:-1], atol=1e-5)
  # At the border mirror padding is exact only to first order; still close.
  assert np.abs(d - ramp).max() < 0.02


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_pack_unpack_inverse_and_semantics(pattern):
  m = bayer.mosaic(RGB, pattern)
  p = bayer.pack(m, pattern)
  assert p.shape == (H // 2, W // 2, 4)
  np.testing.assert_array_equal(np.asarray(bayer.unpack(p, pattern)), np.asarray(m))
  # A pure primary lights exactly its packed channel(s).
  for colour, expect in ((0, [1, 0, 0, 0]), (1, [0, 1, 1, 0]), (2, [0, 0, 0, 1])):
    img = np.zeros((H, W, 3), np.float32)
    img[..., colour] = 1.0
    got = np.asarray(bayer.pack(bayer.mosaic(img, pattern), pattern))
    np.testing.assert_array_equal(got, np.broadcast_to(np.float32(expect), got.shape))
  # Gr really is the green on the red row: mark green by row parity.
  img = np.zeros((H, W, 3), np.float32)
  red_row = int(np.argwhere(bayer.channel_index(pattern) == 0)[0, 0])
  img[red_row::2, :, 1] = 0.25
  img[1 - red_row::2, :, 1] = 0.75
  got = np.asarray(bayer.pack(bayer.mosaic(img, pattern), pattern))
  np.testing.assert_array_equal(got[..., 1], 0.25)
  np.testing.assert_array_equal(got[..., 2], 0.75)


def test_batch_dims_and_jit():
  batch = np.stack([RGB, RGB[::-1]])
  f = jax.jit(lambda x: bayer.demosaic_bilinear(bayer.mosaic(x, "GBRG"), "GBRG"))
  out = np.asarray(f(batch))
  assert out.shape == (2, H, W, 3)
  single = np.asarray(bayer.demosaic_bilinear(bayer.mosaic(RGB[::-1], "GBRG"), "GBRG"))
  np.testing.assert_allclose(out[1], single, atol=1e-6)
  pk = jax.jit(functools.partial(bayer.pack, pattern="BGGR"))
  upk = jax.jit(functools.partial(bayer.unpack, pattern="BGGR"))
  m = bayer.mosaic(batch, "BGGR")
  np.testing.assert_array_equal(np.asarray(upk(pk(m))), np.asarray(m))


def test_pack_rejects_odd_size():
  with pytest.raises(ValueError, match="even"):
    bayer.pack(np.zeros((5, 6)), "RGGB")


def test_tone_curves():
  x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
  np.testing.assert_allclose(tone.smoothstep(tone.inverse_smoothstep(x)), x, atol=2e-6)
  np.testing.assert_allclose(tone.inverse_smoothstep(tone.smoothstep(x)), x, atol=1e-4)
  np.testing.assert_allclose(tone.smoothstep(np.float32([0.25])), [3 / 16 - 2 / 64])
  np.testing.assert_allclose(tone.gamma_expand(tone.gamma_compress(x)), np.maximum(x, 1e-8),
                             rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(tone.gamma_compress(np.float32([0.25]), 2.0), [0.5])
  assert float(tone.gamma_compress(np.float32(-1.0))) == pytest.approx(1e-8 ** (1 / 2.2))
  np.testing.assert_allclose(tone.srgb_decode(tone.srgb_encode(x)), x, atol=1e-6)
  # Known points of IEC 61966-2-1: linear 0.18 -> 0.4613561, 0.002 -> 0.02584 (linear part).
  np.testing.assert_allclose(tone.srgb_encode(np.float32([0.18, 0.002])),
                             [0.4613561, 0.02584], rtol=1e-5)
  g = jax.grad(lambda v: jnp.sum(tone.gamma_compress(v) + tone.srgb_encode(v)))(x)
  assert np.all(np.isfinite(np.asarray(g)))


def test_render_curve_is_libraws_and_the_tone_models_invert():
  """The protocol's render curve: a linear toe of slope 4.5 joined to a power 1/2.222 law
  with value and slope continuous (dcraw's gamma_curve), and each tone model's to_linear
  undoes its from_linear."""
  g0, g1, g3, g4 = tone.libraw_curve_constants(*tone.RENDER_GAMMA)
  assert g1 == 4.5 and g0 == pytest.approx(1 / 2.222)
  assert g3 * g1 == pytest.approx((1 + g4) * g3 ** g0 - g4, abs=1e-9)   # value
  assert g1 == pytest.approx((1 + g4) * g0 * g3 ** (g0 - 1), rel=1e-6)  # slope
  assert 0.015 < g3 < 0.02 and 0.09 < g4 < 0.1     # BT.709's shape: 0.018, 0.099
  x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
  assert float(tone.render_encode(np.float32(1.0))) == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(tone.render_encode(np.float32([0.01])), [0.045], rtol=1e-6)
  for model in tone.TONE_MODELS:
    np.testing.assert_allclose(tone.from_linear(tone.to_linear(x, model), model), x,
                               atol=2e-6, err_msg=model)
  # the two models differ most in the mid-tones, where Brooks et al.'s smoothstep acts
  mid = np.float32([0.5])
  assert abs(float(tone.to_linear(mid, "render")[0] - tone.to_linear(mid, "upi")[0])) > 0.02
  with pytest.raises(ValueError, match="tone model"):
    tone.to_linear(x, "filmic")
  g = jax.grad(lambda v: jnp.sum(tone.render_encode(v) + tone.render_decode(v)))(x)
  assert np.all(np.isfinite(np.asarray(g)))


def test_random_camera_params_ranges():
  ps = jax.vmap(up.random_camera_params)(jax.random.split(jax.random.key(1), 64))
  np.testing.assert_allclose(np.asarray(ps.rgb2cam).sum(-1), 1.0, atol=1e-5)
  eye = np.asarray(jnp.einsum("bij,bjk->bik", ps.rgb2cam, ps.cam2rgb))
  np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-4)
  g = np.asarray(ps.wb_gains)
  assert np.all(g[:, 1] == 1.0)
  assert np.all((g[:, 0] >= 1.9) & (g[:, 0] <= 2.4)) and np.ptp(g[:, 0]) > 0.2
  assert np.all((g[:, 2] >= 1.5) & (g[:, 2] <= 1.9)) and np.ptp(g[:, 2]) > 0.2
  shot = np.asarray(ps.shot_noise)
  assert np.all((shot >= 1e-4) & (shot <= 1.2e-2))
  # log(read) follows the published line 2.18 log(shot) + 1.2 with 0.26 scatter.
  resid = np.log(np.asarray(ps.read_noise)) - (2.18 * np.log(shot) + 1.2)
  assert abs(resid.mean()) < 0.15 and 0.15 < resid.std() < 0.4
  # Different keys give different cameras.
  assert np.ptp(np.asarray(ps.rgb2cam)[:, 0, 0]) > 0.05


def test_process_inverts_unprocess():
  data = pytest.importorskip("skimage.data")
  img = data.astronaut()[::4, ::4].astype(np.float32) / 255.0
  rt = jax.jit(lambda x, p: up.process(up.unprocess(x, p), p))
  for seed in range(4):
    p = up.random_camera_params(jax.random.key(seed))
    out = np.asarray(rt(img, p))
    err = np.abs(out - img)
    # Away from clipped highlights/out-of-gamut colours the model inverts to float precision.
    assert np.percentile(err, 99) < 1e-5, seed
    assert err.mean() < 1e-4, seed


def test_unprocess_is_raw_like():
  img = RNG.uniform(0.05, 0.85, (16, 16, 3)).astype(np.float32)
  p = up.random_camera_params(jax.random.key(3))
  lin = np.asarray(up.unprocess(img, p))
  assert lin.min() >= 0 and lin.max() <= 1
  # Mid-grey sRGB becomes dark linear camera RGB, green strongest (inverse white balance).
  grey = np.asarray(up.unprocess(np.full((1, 1, 3), 0.5, np.float32), p))[0, 0]
  np.testing.assert_allclose(grey * np.asarray(p.wb_gains), 0.5 ** 2.2 * np.ones(3), rtol=1e-4)
  # A white highlight stays white-ish instead of taking the inverse-gain tint.
  white = np.asarray(up.unprocess(np.ones((1, 1, 3), np.float32), p))[0, 0]
  np.testing.assert_allclose(white, 1.0, atol=1e-5)


def test_add_noise_variance():
  x = jnp.full((200_000,), 0.3, jnp.float32)
  n = np.asarray(up.add_noise(jax.random.key(0), x, 0.01, 0.0004))
  assert abs(n.mean() - 0.3) < 1e-3
  np.testing.assert_allclose(n.var(), 0.01 * 0.3 + 0.0004, rtol=0.02)
  n2 = np.asarray(up.add_noise(jax.random.key(1), x, 0.01, 0.0004))
  assert not np.array_equal(n, n2)


def test_quantize():
  x = np.float32([-0.5, 0.0, 0.5, 1.0, 2.0])
  q = np.asarray(jax.jit(up.quantize, static_argnums=1)(x, 14, 512))
  assert q.dtype == np.uint16
  np.testing.assert_array_equal(q, [512, 512, round(512 + 0.5 * (16383 - 512)), 16383, 16383])
