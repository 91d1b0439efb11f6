"""The differentiable JPEG simulator against real libjpeg (Pillow) and the rounding maths."""
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jisp.core.images import decode_jpeg, encode_jpeg
from jisp.data import virtual_camera
from jisp.isp import jpeg

PHOTOS = ("astronaut", "coffee", "chelsea")
PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168735892, -0.331264108, 0.5],
                 [0.5, -0.418687589, -0.081312411]])


def photo(name):
  import skimage.data  # bundled with scikit-image: no download
  return getattr(skimage.data, name)()


def pil_roundtrip(img_u8, quality, subsampling="4:2:0"):
  buf = io.BytesIO()
  Image.fromarray(img_u8).save(buf, format="JPEG", quality=quality,
                               subsampling=PIL_SUBSAMPLING[subsampling])
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert("RGB"), np.float32) / 255.0, im.quantization


def psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def chroma_psnr(a, b):
  """PSNR of the Cb, Cr planes alone: where a chroma resampling error shows undiluted."""
  return psnr((np.asarray(a, np.float64) @ _YCC.T)[..., 1:],
              (np.asarray(b, np.float64) @ _YCC.T)[..., 1:])


def libjpeg_roundtrip(x, quality, subsampling):
  """Pillow's libjpeg, through the product's own real-JPEG helpers, in [0, 1] units."""
  return decode_jpeg(encode_jpeg(x, quality, subsampling)).astype(np.float32) / 255.0


@pytest.mark.parametrize("quality", [5, 10, 30, 50, 75, 90, 100])
def test_tables_are_libjpegs(quality):
  x = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
  _, q = pil_roundtrip(x, quality)
  luma, chroma = jpeg.quant_tables(quality)
  np.testing.assert_array_equal(np.asarray(luma), np.reshape(q[0], (8, 8)))
  np.testing.assert_array_equal(np.asarray(chroma), np.reshape(q[1], (8, 8)))


def test_fourier_round_tends_to_round_within_the_stated_bound():
  x = np.linspace(-3.0, 3.0, 20001)
  d = np.abs(np.abs(x - np.floor(x) - 0.5))          # distance to the nearest half-integer
  away = d >= 0.05
  errs = []
  for k in (1, 3, 10, 30, 100):
    q = np.asarray(jax.jit(lambda v: jpeg.fourier_round(v, k))(jnp.asarray(x, jnp.float32)))
    err = np.abs(q - np.round(x))
    bound = jpeg.fourier_round_bound(x, k)
    assert np.all(err[away] <= bound[away] + 1e-5), k
    errs.append(err[away].max())
    # exact at the integers, symmetric about them
    ints = np.arange(-3.0, 4.0)
    np.testing.assert_allclose(np.asarray(jpeg.fourier_round(jnp.asarray(ints), k)), ints,
                               atol=1e-5)
  assert all(a > b for a, b in zip(errs, errs[1:])), errs   # monotone in K on this set
  assert errs[-1] < 0.04 and errs[0] > 0.15, errs            # ~1/K: K=100 is 5x+ better
  # K = 10 (paper): within 0.05 of round() for every x at least 0.15 from a half-integer
  q10 = np.asarray(jpeg.fourier_round(jnp.asarray(x, jnp.float32), 10))
  assert np.abs(q10 - np.round(x))[d >= 0.15].max() < 0.05


def test_other_roundings():
  x = jnp.linspace(-2.4, 2.4, 97)
  np.testing.assert_array_equal(np.asarray(jpeg.ste_round(x)), np.round(np.asarray(x)))
  g = jax.grad(lambda v: jnp.sum(jpeg.ste_round(v)))(x)
  np.testing.assert_array_equal(np.asarray(g), 1.0)                    # straight-through
  xn = np.asarray(x)
  off_half = np.abs(xn - np.floor(xn) - 0.5) > 0.02     # round() jumps at the half-integers
  np.testing.assert_allclose(np.asarray(jpeg.dsq_round(x, 200.0))[off_half],
                             np.round(xn)[off_half], atol=1e-3)
  np.testing.assert_allclose(np.asarray(jpeg.cubic_round(jnp.arange(-3.0, 4.0))),
                             np.arange(-3.0, 4.0))
  with pytest.raises(ValueError, match="rounding"):
    jpeg.round_fn("nearest")


# One compile per shape and setting: eager dispatch of the many small ops is several times
# slower than compiling.
jit_simulate = jax.jit(jpeg.jpeg_simulate,
                       static_argnames=("subsampling", "rounding", "integer_samples", "variant"))


@functools.partial(jax.jit, static_argnames="subsampling")
def three_simulators(x, subsampling):
  """q90 with Fourier rounding (K=10, training), hard rounding, and hard with 8-bit samples."""
  sim = functools.partial(jpeg.jpeg_simulate, quality=90, subsampling=subsampling)
  return (sim(x, rounding="fourier", fourier_terms=10), sim(x, rounding="round"),
          sim(x, rounding="round", integer_samples=True))


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:2:2"])     # 4:2:2: InvISP's test codec
@pytest.mark.parametrize("name", virtual_camera.list_source_images())
def test_simulator_matches_real_jpeg_q90(name, subsampling):
  x = virtual_camera.load_source_image(name)        # 8-bit values, as a camera JPEG's pixels
  ref = libjpeg_roundtrip(x, 90, subsampling)
  out, hard, exact = map(np.asarray, three_simulators(x, subsampling))
  p_sim, p_hard, p_ref = psnr(out, ref), psnr(hard, ref), psnr(ref, x)
  p_exact, c_exact = psnr(exact, ref), chroma_psnr(exact, ref)
  print(f"{name} {x.shape} {subsampling}: vs libjpeg: sim(K=10) {p_sim:.2f} dB, hard-round "
        f"{p_hard:.2f} dB, integer samples {p_exact:.2f} dB (chroma {c_exact:.2f} dB); "
        f"libjpeg vs original {p_ref:.2f} dB")
  assert out.shape == x.shape
  assert p_sim >= 35.0 and p_hard >= 35.0
  # It simulates the codec's actual errors, not merely "something close to the input".
  assert p_sim > p_ref + 5.0 and p_hard > p_ref + 5.0
  # Margins under the values measured on every bundled photo (printed above). The
  # real-valued planes (the training simulator) miss libjpeg's 8-bit rounding of them;
  # with it, only libjpeg's integer DCT is left.
  assert p_sim >= 45.0 and p_hard >= 44.5
  assert p_exact >= 49.0
  # A wrong chroma filter (e.g. nearest-neighbour upsampling) is far below this on every photo.
  assert c_exact >= 55.0
  np.testing.assert_allclose(exact * 255.0, np.round(exact * 255.0), atol=1e-3)  # 8-bit out


def tie_colours(n, seed=0):
  """n 8-bit colours: a quarter whose real-valued YCbCr lies nearest a half-integer, a
  quarter whose RGB decoded again from the rounded YCbCr does, the rest random. At such
  near-ties only libjpeg's exact fixed-point arithmetic decides the rounding."""
  rng = np.random.default_rng(seed)
  rgb = rng.integers(0, 256, (200_000, 3)).astype(np.float64)
  ycc = rgb @ _YCC.T + [0.0, 128.0, 128.0]
  back = np.round(ycc) - [0.0, 128.0, 128.0]
  dec = np.stack([back[:, 0] + 1.402 * back[:, 2],
                  back[:, 0] - 0.344136286 * back[:, 1] - 0.714136286 * back[:, 2],
                  back[:, 0] + 1.772 * back[:, 1]], axis=1)
  tie = lambda v: np.argsort(np.abs(v - np.floor(v) - 0.5).min(axis=1))[:n // 4]
  picks = np.concatenate([tie(ycc), tie(dec), np.arange(n - 2 * (n // 4))])
  return rgb[picks].astype(np.uint8)


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_integer_samples_are_libjpegs_arithmetic(subsampling):
  # Flat 16x16 tiles at q100: the DCT of a flat block is exact in libjpeg's integer DCT as
  # well, so everything else (fixed-point colour conversion both ways, integer chroma
  # averaging and triangle upsampling across tile edges, edge expansion of a size that is
  # not whole MCUs) must agree bit for bit.
  img = np.repeat(np.repeat(tie_colours(96).reshape(8, 12, 3), 16, axis=0), 16, axis=1)
  img = img[:120, :184]
  ref = np.round(libjpeg_roundtrip(img, 100, subsampling) * 255.0)
  out = np.asarray(jit_simulate(img / 255.0, 100, subsampling=subsampling,
                                      rounding="round", integer_samples=True))
  np.testing.assert_array_equal(np.round(out * 255.0), ref)
  flt = np.asarray(jit_simulate(img / 255.0, 100, subsampling=subsampling, rounding="round"))
  assert 0 < np.abs(np.round(flt * 255.0) - ref).max() <= 2     # real-valued planes: close


def test_integer_samples_pass_gradients_straight_through():
  x = jnp.asarray(photo("coffee")[:32, :48] / 255.0, jnp.float32)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  g = jax.jit(jax.grad(lambda v: jnp.sum(w * jpeg.jpeg_simulate(v, 90, rounding="ste",
                                                                integer_samples=True))))(x)
  g = np.asarray(g)
  assert np.all(np.isfinite(g)) and np.mean(np.abs(g) > 1e-6) > 0.5
  with pytest.raises(ValueError, match="level_shift"):
    jpeg.compress_ycbcr(jnp.zeros((1, 8, 8, 3)), *jpeg.quant_tables(90), level_shift=0.0,
                        integer_samples=True)


def test_real_valued_quality_is_libjpegs_integer_quality():
  for q, as_int in ((89.6, 90), (45.4, 45), (45.5, 46), (0.2, 1), (130.0, 100)):
    ours = jpeg.quant_tables(q)
    ref = jpeg.quant_tables(as_int)
    for a, b in zip(ours, ref):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, tables = pil_roundtrip(photo("chelsea")[:16, :16], 45)
  np.testing.assert_array_equal(np.asarray(jpeg.quant_tables(45.4)[0]),
                                np.reshape(tables[0], (8, 8)))


@pytest.mark.parametrize("subsampling", ["4:2:2", "4:4:4", "4:2:0"])
def test_other_subsamplings_match_real_jpeg(subsampling):
  img = photo("chelsea")[:131, :203]             # odd sizes: padding and cropping
  ref, _ = pil_roundtrip(img, 90, subsampling)
  out = np.asarray(jit_simulate(img / 255.0, 90, subsampling=subsampling,
                                      rounding="round"))
  assert out.shape == img.shape
  assert psnr(out, ref) > psnr(ref, img / 255.0) + 5.0 and psnr(out, ref) > 40.0
  exact = jit_simulate(img / 255.0, 90, subsampling=subsampling, rounding="round",
                             integer_samples=True)
  assert psnr(exact, ref) >= 49.0


def test_edges_are_expanded_as_libjpeg():
  # An even height that is not whole 4:2:0 MCUs: libjpeg fills the last chroma block with
  # copies of the last chroma row (not of the image's last row), and the decoder
  # interpolates only between the chroma rows that cover the image. The band of the last
  # 8 rows and columns is where getting that wrong shows.
  img = photo("coffee")[:130, :202]
  ref, _ = pil_roundtrip(img, 90, "4:2:0")
  out = np.asarray(jit_simulate(img / 255.0, 90, subsampling="4:2:0", rounding="round",
                                      integer_samples=True))
  d = out - ref
  band = np.concatenate([d[-8:].ravel(), d[:-8, -8:].ravel()])
  assert 10 * np.log10(1.0 / np.mean(band.astype(np.float64) ** 2)) >= 49.0


def official_diffjpeg(img, quality, rounding):
  """The official InvISP simulator (yzxing87/Invertible-ISP utils/compression.py,
  decompression.py, JPEG_utils.py: DiffJPEG), transcribed in float64 NumPy for (H, W, 3)
  in [0, 1] with H, W multiples of 16."""
  h, w = img.shape[:2]
  factor = (5000.0 / quality if quality < 50 else 200.0 - quality * 2) / 100.0
  y_table, c_table = jpeg.LUMA_TABLE.T.astype(np.float64), jpeg.CHROMA_TABLE.T.astype(np.float64)
  m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
  ycc = np.tensordot(img * 255.0, m.T, axes=1) + [0.0, 128.0, 128.0]
  pool = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
  comps = {"y": (ycc[..., 0], y_table), "cb": (pool(ycc[..., 1]), c_table),
           "cr": (pool(ycc[..., 2]), c_table)}
  k = np.arange(8)
  cos = np.cos((2 * k[:, None] + 1) * k[None, :] * np.pi / 16)        # [x, u]
  fwd = np.einsum("xu,yv->xyuv", cos, cos)
  inv = np.einsum("ux,vy->xyuv", cos, cos)
  alpha = np.outer(*[np.array([1 / np.sqrt(2)] + [1.0] * 7)] * 2)
  out = {}
  for name, (c, table) in comps.items():
    ch, cw = c.shape
    blocks = c.reshape(ch // 8, 8, cw // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coef = 0.25 * alpha * np.tensordot(blocks - 128.0, fwd, axes=2)
    coef = rounding(coef / (table * factor)) * (table * factor)
    blocks = 0.25 * np.tensordot(coef * alpha, inv, axes=2) + 128.0
    out[name] = blocks.reshape(ch // 8, cw // 8, 8, 8).transpose(0, 2, 1, 3).reshape(ch, cw)
  rep = lambda c: np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)
  ycc = np.stack([out["y"], rep(out["cb"]), rep(out["cr"])], axis=-1) + [0.0, -128.0, -128.0]
  m_inv = np.array([[1.0, 0.0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]])
  return np.clip(np.tensordot(ycc, m_inv.T, axes=1), 0.0, 255.0) / 255.0


def diff_round9(x):
  """utils/JPEG_utils.py diff_round (9 terms)."""
  n = np.arange(1, 10)
  return x - np.sum((-1.0) ** (n + 1) / n * np.sin(2 * np.pi * n * x[..., None]), -1) / np.pi


@pytest.mark.parametrize("quality", [90, 30])
def test_diffjpeg_variant_is_the_official_simulator(quality):
  img = photo("astronaut")[200:248, 180:244] / 255.0                 # 48 x 64
  ref = official_diffjpeg(img, quality, diff_round9)
  out = np.asarray(jax.jit(lambda v: jpeg.jpeg_simulate(
      v, quality, rounding="fourier", fourier_terms=9, variant="diffjpeg"))(img))
  np.testing.assert_allclose(out, ref, atol=2e-4)
  hard = np.asarray(jit_simulate(img, quality, rounding="round", variant="diffjpeg"))
  ref_hard = official_diffjpeg(img, quality, np.round)
  assert np.mean(np.abs(hard - ref_hard) < 1e-4) > 0.99   # rounding ties may flip a few
  # ...and it is further from a real JPEG than the default (repeated chroma, real tables).
  real = libjpeg_roundtrip(img, quality, "4:2:0")
  ours = np.asarray(jit_simulate(img, quality, rounding="round"))
  assert psnr(hard, real) < psnr(ours, real) - 2.0
  with pytest.raises(ValueError, match="variant"):
    jpeg.jpeg_simulate(img, 90, variant="pil")


def test_quality_orders_the_error():
  x = photo("astronaut")[:128, :128] / 255.0
  errs = [psnr(np.asarray(jit_simulate(x, q, rounding="round")), x) for q in (10, 50, 90)]
  assert errs[0] < errs[1] < errs[2]


def test_any_shape_and_batch_dims():
  rng = np.random.default_rng(1)
  sim = jit_simulate
  for shape in [(1, 1, 3), (7, 9, 3), (2, 3, 17, 24, 3)]:
    x = rng.random(shape, np.float32)
    for integer_samples in (False, True):
      out = sim(x, 90, integer_samples=integer_samples)
      assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))
  # batched == one by one
  xs = rng.random((2, 24, 40, 3), np.float32)
  one = np.stack([np.asarray(sim(v, 75)) for v in xs])
  np.testing.assert_allclose(np.asarray(sim(xs, 75)), one, atol=1e-5)
  with pytest.raises(ValueError, match="subsampling"):
    jpeg.jpeg_simulate(xs, 90, subsampling="4:1:1")


@pytest.mark.parametrize("rounding", ["fourier", "ste", "dsq"])
def test_gradient_is_finite_and_nonzero(rounding):
  x = jnp.asarray(photo("coffee")[:64, :96] / 255.0, jnp.float32)
  w = jax.random.normal(jax.random.PRNGKey(0), x.shape)
  g = jax.jit(jax.grad(lambda v: jnp.sum(w * jpeg.jpeg_simulate(v, 90, rounding=rounding))))(x)
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  assert np.mean(np.abs(g) > 1e-6) > 0.5
  if rounding == "fourier":
    # Directional derivative = central finite difference (the map is smooth, but Q_K has
    # slope up to 2K+1, so the step must be tiny; outputs are subtracted before summing
    # to stay within float32 precision).
    v = jax.random.normal(jax.random.PRNGKey(1), x.shape) * 3e-5
    sim = jax.jit(lambda z: jpeg.jpeg_simulate(z, 90))
    fd = float(jnp.sum(w * (sim(x + v) - sim(x - v)))) / 2.0
    an = float(jnp.sum(jnp.asarray(g) * v))
    assert abs(fd - an) < 0.1 * abs(an), (fd, an)


def test_hard_rounding_has_zero_gradient_through_quantisation():
  x = jnp.full((16, 16, 3), 0.5, jnp.float32)
  g = jax.jit(jax.grad(lambda v: jnp.sum(jpeg.jpeg_simulate(v, 90, rounding="round"))))(x)
  assert float(jnp.max(jnp.abs(g))) == 0.0
