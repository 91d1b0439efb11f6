"""Tiled reconstruction: layouts cover the image, merge is exact, overlap hides patch-wise
offsets, shared noise is one field per image."""
import jax
import numpy as np
import pytest

from jisp.infer import tiling


def _img(h, w, c=3, seed=0):
  return np.random.default_rng(seed).random((h, w, c), np.float32)


@pytest.mark.parametrize("h,w,patch,overlap,grid", [
    (100, 75, 16, 4, False), (64, 64, 16, 0, False), (37, 50, 16, 0, True),
    (10, 7, 16, 4, False), (10, 7, 16, 0, True), (129, 130, 64, 16, False),
    (33, 40, 16, 15, False)])
def test_layout_covers_image_and_merge_of_identity_is_exact(h, w, patch, overlap, grid):
  lay = tiling.make_layout(h, w, patch, overlap, grid)
  covered = np.zeros(lay.padded, int)
  for y, x in lay.positions:
    covered[y:y + patch, x:x + patch] += 1
  assert covered[:h, :w].min() >= 1
  if grid:
    assert covered.max() == 1 and all(v % patch == 0 for v in lay.ys + lay.xs)
  else:
    # the last patch is flush with the far edge: padding only when the image is smaller
    assert lay.padded == (max(h, patch), max(w, patch))
    assert all(b - a <= patch - overlap for a, b in zip(lay.ys, lay.ys[1:]))
  img = _img(h, w)
  out = tiling.reconstruct(img, lambda p, z: p, lay, key=jax.random.PRNGKey(0))
  assert out.shape == img.shape
  np.testing.assert_allclose(out, img, atol=2e-7, rtol=0)


def test_bad_layouts_are_refused():
  with pytest.raises(ValueError, match="overlap"):
    tiling.make_layout(50, 50, 16, 16)
  with pytest.raises(ValueError, match="grid"):
    tiling.make_layout(50, 50, 16, 4, grid=True)
  lay = tiling.make_layout(50, 50, 16, 4)
  with pytest.raises(ValueError, match="patches"):
    tiling.merge(np.zeros((3, 16, 16, 3)), lay)


def test_blend_ramps_are_a_partition_of_unity():
  p, ov = 16, 6
  w = tiling.blend_window(p, ov)[p // 2]  # a row through the middle: the 1-D window
  assert np.all(w > 0) and np.all(w <= 1)
  np.testing.assert_allclose(w[p - ov:] + w[:ov], 1.0, atol=1e-6)  # next patch's ramp
  assert np.all(w[ov:p - ov] == 1.0)
  assert np.all(tiling.blend_window(p, 0) == 1.0)


def _offset_predictor(seed, scale=0.1):
  """Adds one random constant per patch: a fast sampler's patch-wise colour shift."""
  def f(p, z):
    off = np.random.default_rng(seed).uniform(-scale, scale, (len(p), 1, 1, p.shape[-1]))
    return p + off.astype(np.float32)
  return f


def _max_jump(x):
  return max(np.abs(np.diff(x, axis=0)).max(), np.abs(np.diff(x, axis=1)).max())


def test_overlap_blending_shrinks_the_seams_of_patchwise_offsets():
  img = np.full((160, 160, 3), 0.5, np.float32)
  key = jax.random.PRNGKey(0)
  grid = tiling.make_layout(160, 160, 32, 0, grid=True)
  over = tiling.make_layout(160, 160, 32, 16)
  g = tiling.reconstruct(img, _offset_predictor(1), grid, key=key)
  o = tiling.reconstruct(img, _offset_predictor(1), over, key=key)
  jump_g, jump_o = _max_jump(g), _max_jump(o)
  assert jump_g > 0.05          # hard tile edges: jumps of the size of the offsets
  assert jump_o < 0.25 * jump_g  # the same offsets fade over the 16-pixel ramps
  # The seam measure sees it too (error against the true image, noise so inner diffs exist).
  noise = np.random.default_rng(2).normal(0, 0.002, img.shape).astype(np.float32)
  assert tiling.seam_ratio(g + noise, grid, img) > 5
  assert tiling.seam_ratio(o + noise, over, img) < 0.5 * tiling.seam_ratio(g + noise, grid, img)


def test_seam_ratio_is_one_without_seams():
  lay = tiling.make_layout(96, 96, 16, 0, grid=True)
  x = np.random.default_rng(0).random((96, 96, 3))
  assert abs(tiling.seam_ratio(x, lay) - 1.0) < 0.1


def test_shared_noise_is_one_field_cut_like_the_image():
  lay = tiling.make_layout(50, 61, 16, 6)
  key = jax.random.PRNGKey(3)
  z = tiling.initial_noise(key, lay, 3, shared=True)
  field = np.asarray(jax.random.normal(key, lay.padded + (3,)))
  np.testing.assert_allclose(tiling.merge(z, lay), field[:50, :61], atol=1e-6)
  # overlapping neighbours carry the same noise on the pixels they share
  (y0, x0), (y1, x1) = lay.positions[0], lay.positions[1]
  assert y0 == y1 and 0 < x1 - x0 < 16
  np.testing.assert_array_equal(z[0][:, x1 - x0:], z[1][:, :16 - (x1 - x0)])
  zi = tiling.initial_noise(key, lay, 3, shared=False)
  assert not np.allclose(zi[0][:, x1 - x0:], zi[1][:, :16 - (x1 - x0)])
  assert abs(float(zi.std()) - 1) < 0.05


def test_shared_noise_makes_a_pixelwise_noisy_predictor_seamless():
  """A predictor that is a per-pixel function of (input, noise) -- what a deterministic
  sampler is, to first order -- gives one consistent image with shared noise, and disagreeing
  patches (seams) with independent noise."""
  img = _img(48, 48)
  lay = tiling.make_layout(48, 48, 16, 8)
  f = lambda p, z: p + 0.1 * z
  key = jax.random.PRNGKey(5)
  shared = tiling.reconstruct(img, f, lay, key=key, shared_noise=True)
  field = np.asarray(jax.random.normal(key, lay.padded + (3,)))[:48, :48]
  np.testing.assert_allclose(shared, img + 0.1 * field, atol=1e-6)
  indep = tiling.reconstruct(img, f, lay, key=key, shared_noise=False)
  # independent patches average several noises where they overlap: not a single draw
  assert abs(float((indep - img).std()) - 0.1) > 0.01
