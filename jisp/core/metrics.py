"""The image metrics every jisp number is computed with: PSNR, SSIM, RAW PSNR over tiles.

Images are (..., H, W, C) in [0, 1] (numpy or jnp). PSNR is capped at MAX_PSNR (MSE
floored at 1e-10), so identical images give a finite, JSON-safe number. One tile rule: the
official InvISP test code's, rows int(i H / n) .. int((i + 1) H / n).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MAX_PSNR = 100.0
_MSE_FLOOR = 10.0 ** (-MAX_PSNR / 10.0)


def psnr(x, y, data_range: float = 1.0, axis=None):
  """10 log10(range^2 / MSE), the mean taken over `axis` (None: everything); jnp float32.

  axis=(-3, -2, -1) gives one PSNR per image of a batch (B, H, W, C).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"psnr: shapes differ: {x.shape} vs {y.shape}")
  mse = jnp.mean((x - y) ** 2, axis=axis) / (data_range ** 2)
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, _MSE_FLOOR))


def batch_psnr(x, y, data_range: float = 1.0):
  """Mean over a batch (B, H, W, C) of the per-image PSNR (how tasks report it)."""
  return jnp.mean(psnr(x, y, data_range, axis=(-3, -2, -1)))


def tile_slices(height: int, width: int, n: int = 3) -> list[tuple[slice, slice]]:
  """The n x n test tiles of an image, row-major."""
  if height < n or width < n:
    raise ValueError(f"image {height}x{width} is smaller than {n}x{n} tiles")
  rows = [slice(int(i * height / n), int((i + 1) * height / n)) for i in range(n)]
  cols = [slice(int(j * width / n), int((j + 1) * width / n)) for j in range(n)]
  return [(r, c) for r in rows for c in cols]


def tiled_psnr(pred, true, tiles: int = 3, data_range: float = 1.0) -> float:
  """Mean PSNR over a tiles x tiles grid of one (H, W, C) image (the InvISP protocol's RAW
  PSNR, which weights dark and bright regions more evenly than one whole-image MSE)."""
  pred = np.asarray(pred, np.float32)
  true = np.asarray(true, np.float32)
  if pred.shape != true.shape:
    raise ValueError(f"tiled_psnr: shapes differ: {pred.shape} vs {true.shape}")
  return float(np.mean([float(psnr(pred[r, c], true[r, c], data_range))
                        for r, c in tile_slices(pred.shape[0], pred.shape[1], tiles)]))


SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # skimage's int(3.5 sigma + 0.5): an 11-tap window


def _gauss_1d(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _filter_valid(x, k):
  """Separable 'valid' filtering over H, W of (H, W, C)."""
  n = len(k)
  h, w = x.shape[0] - n + 1, x.shape[1] - n + 1
  rows = sum(float(k[i]) * x[i:i + h] for i in range(n))
  return sum(float(k[j]) * rows[:, j:j + w] for j in range(n))


def ssim_map(x, y, data_range: float = 1.0):
  """Per-pixel, per-channel SSIM (Wang et al. 2004) of (H, W, C) images over the valid
  region: Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, population
  (co)variances."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"ssim: shapes differ: {x.shape} vs {y.shape}")
  if x.ndim == 2:
    x, y = x[..., None], y[..., None]
  k = _gauss_1d()
  if min(x.shape[:2]) < len(k):
    raise ValueError(f"ssim: image {x.shape[:2]} too small for an {len(k)}-pixel window")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  f = lambda a: _filter_valid(a, k)
  mx, my = f(x), f(y)
  vx = f(x * x) - mx * mx
  vy = f(y * y) - my * my
  cxy = f(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(x, y, data_range: float = 1.0):
  """Mean SSIM over pixels and channels: the number of
  skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)."""
  return jnp.mean(ssim_map(x, y, data_range))


# --------------------------------------------------------------------------- AIM 2022
# The Reversed ISP challenge's scoring (mv-lab/AISP scoring/evaluation.py + myssim.py), on
# packed RAW (h, w, 4) in [0, 1] (the challenge's uint16 / 1024). Its SSIM is not
# `ssim` above: scipy's gaussian_filter with its default truncate 4 gives a 13-tap window
# (radius 6) over the whole image with mirrored borders, and the map is cropped by 5 px
# (the (11 - 1) / 2 of the nominal window) before the mean, so the border rows see one
# mirrored pixel; per channel, then the mean of the channels.

AIM_SSIM_RADIUS = 6  # int(4.0 * 1.5 + 0.5): scipy.ndimage.gaussian_filter's default truncate
AIM_SSIM_CROP = 5


def aim_psnr(pred, true):
  """AIM 2022 PSNR of packed RAW (..., h, w, 4) in [0, 1]: 10 log10(1 / MSE) over all
  values of each image (one per leading index); then the challenge averages over images.
  Identical images give MAX_PSNR (the organisers' script returns 999 there)."""
  return psnr(pred, true, 1.0, axis=(-3, -2, -1))


def _filter_mirror(x, k):
  """Separable filtering over H, W of (..., H, W, C) with scipy's 'reflect' border
  (d c b a | a b c d, numpy's 'symmetric'); same size out."""
  r = len(k) // 2
  pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
  xp = jnp.pad(x, pad, mode="symmetric")
  h, w = x.shape[-3], x.shape[-2]
  rows = sum(float(k[i]) * xp[..., i:i + h, :, :] for i in range(len(k)))
  return sum(float(k[j]) * rows[..., :, j:j + w, :] for j in range(len(k)))


def aim_ssim(pred, true):
  """AIM 2022 SSIM of packed RAW (..., h, w, C) in [0, 1], one value per image: per
  channel, Gaussian weights sigma 1.5 (13 taps, mirrored borders), K1 0.01, K2 0.03,
  data range 1, population covariance, the map cropped by 5 px; mean over pixels, then
  over channels (see the section comment)."""
  x = jnp.asarray(pred, jnp.float32)
  y = jnp.asarray(true, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"aim_ssim: shapes differ: {x.shape} vs {y.shape}")
  if x.ndim < 3 or min(x.shape[-3:-1]) <= 2 * AIM_SSIM_CROP:
    raise ValueError(f"aim_ssim: expected (..., h, w, C) with h, w > {2 * AIM_SSIM_CROP}, "
                     f"got {x.shape}")
  k = _gauss_1d(SSIM_SIGMA, AIM_SSIM_RADIUS)
  f = lambda a: _filter_mirror(a, k)
  mx, my = f(x), f(y)
  vx = f(x * x) - mx * mx
  vy = f(y * y) - my * my
  cxy = f(x * y) - mx * my
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  c = AIM_SSIM_CROP
  s = s[..., c:s.shape[-3] - c, c:s.shape[-2] - c, :]
  return jnp.mean(s, axis=(-3, -2, -1))
