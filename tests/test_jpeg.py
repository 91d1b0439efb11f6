"""The differentiable JPEG simulator against real libjpeg (Pillow) and the rounding maths."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jisp.isp import jpeg

PHOTOS = ("astronaut", "coffee", "chelsea")
PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


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


@pytest.mark.parametrize("name", PHOTOS)
def test_simulator_matches_real_jpeg_q90(name):
  img = photo(name)
  x = img.astype(np.float32) / 255.0
  ref, _ = pil_roundtrip(img, 90)
  sim = jax.jit(lambda v: jpeg.jpeg_simulate(v, 90, rounding="fourier", fourier_terms=10))
  out = np.asarray(sim(x))
  hard = np.asarray(jpeg.jpeg_simulate(x, 90, rounding="round"))
  p_sim, p_hard, p_ref = psnr(out, ref), psnr(hard, ref), psnr(ref, x)
  print(f"{name} {img.shape}: sim(K=10) vs PIL {p_sim:.2f} dB, hard-round sim vs PIL "
        f"{p_hard:.2f} dB, PIL vs original {p_ref:.2f} dB")
  assert out.shape == x.shape
  assert p_sim >= 35.0 and p_hard >= 35.0
  # It simulates the codec's actual errors, not merely "something close to the input".
  assert p_sim > p_ref + 5.0 and p_hard > p_ref + 5.0


@pytest.mark.parametrize("subsampling", ["4:2:2", "4:4:4"])
def test_other_subsamplings_match_real_jpeg(subsampling):
  img = photo("chelsea")[:131, :203]             # odd sizes: padding and cropping
  ref, _ = pil_roundtrip(img, 90, subsampling)
  out = np.asarray(jpeg.jpeg_simulate(img / 255.0, 90, subsampling=subsampling,
                                      rounding="round"))
  assert out.shape == img.shape
  assert psnr(out, ref) > psnr(ref, img / 255.0) + 5.0 and psnr(out, ref) > 40.0


def test_quality_orders_the_error():
  x = photo("astronaut")[:128, :128] / 255.0
  errs = [psnr(np.asarray(jpeg.jpeg_simulate(x, q, rounding="round")), x) for q in (10, 50, 90)]
  assert errs[0] < errs[1] < errs[2]


def test_any_shape_and_batch_dims():
  rng = np.random.default_rng(1)
  for shape in [(1, 1, 3), (7, 9, 3), (2, 3, 17, 24, 3)]:
    x = rng.random(shape, np.float32)
    out = jpeg.jpeg_simulate(x, 90)
    assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))
  # batched == one by one
  xs = rng.random((2, 24, 40, 3), np.float32)
  one = np.stack([np.asarray(jpeg.jpeg_simulate(v, 75)) for v in xs])
  np.testing.assert_allclose(np.asarray(jpeg.jpeg_simulate(xs, 75)), one, atol=1e-5)
  with pytest.raises(ValueError, match="subsampling"):
    jpeg.jpeg_simulate(xs, 90, subsampling="4:1:1")


@pytest.mark.parametrize("rounding", ["fourier", "ste", "dsq"])
def test_gradient_is_finite_and_nonzero(rounding):
  x = jnp.asarray(photo("coffee")[:64, :96] / 255.0, jnp.float32)
  w = jax.random.normal(jax.random.PRNGKey(0), x.shape)
  g = jax.grad(lambda v: jnp.sum(w * jpeg.jpeg_simulate(v, 90, rounding=rounding)))(x)
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
  g = jax.grad(lambda v: jnp.sum(jpeg.jpeg_simulate(v, 90, rounding="round")))(x)
  assert float(jnp.max(jnp.abs(g))) == 0.0
