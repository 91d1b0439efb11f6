"""Image metrics in jnp: PSNR, SSIM, and RAW PSNR over 3x3 tiles (the InvISP protocol).

Images are (H, W, C) in [0, 1] (numpy or jnp). PSNR is capped at 100 dB (MSE floor 1e-10)
so identical images give a finite, JSON-safe number.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MAX_PSNR = 100.0

# Perceptual metrics (LPIPS, FID, MUSIQ, CLIPIQA) need network weights that cannot be
# downloaded offline, so none ships. A user who has them registers
# `fn(pred, true) -> float` (HxWx3 numpy in [0, 1]) here and `jisp eval` reports it per
# image and setting next to PSNR/SSIM.
EXTRA_METRICS: dict = {}


def register_metric(name: str, fn) -> None:
  EXTRA_METRICS[name] = fn


def psnr(x, y, data_range: float = 1.0):
  """10 log10(range^2 / MSE) over all pixels and channels (scalar jnp float32)."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"psnr: shapes differ: {x.shape} vs {y.shape}")
  mse = jnp.mean((x - y) ** 2)
  return jnp.minimum(10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-10)), MAX_PSNR)


def tile_bounds(length: int, n: int) -> list[tuple[int, int]]:
  """n near-equal [start, end) pieces of an axis (numpy.array_split sizes)."""
  edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(length), n)])
  return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def tiled_psnr(pred, true, tiles: int = 3, data_range: float = 1.0) -> float:
  """Mean PSNR over a tiles x tiles grid of each image (DESIGN.md's RAW PSNR protocol:
  InvISP scores each test image as 3x3 tiles, which weights dark and bright regions
  more evenly than one whole-image MSE)."""
  pred = np.asarray(pred, np.float32)
  true = np.asarray(true, np.float32)
  if pred.shape != true.shape:
    raise ValueError(f"tiled_psnr: shapes differ: {pred.shape} vs {true.shape}")
  h, w = pred.shape[:2]
  if h < tiles or w < tiles:
    raise ValueError(f"tiled_psnr: image {h}x{w} is smaller than {tiles}x{tiles} tiles")
  vals = [float(psnr(pred[y0:y1, x0:x1], true[y0:y1, x0:x1], data_range))
          for y0, y1 in tile_bounds(h, tiles) for x0, x1 in tile_bounds(w, tiles)]
  return float(np.mean(vals))


def _gauss_1d(sigma: float, truncate: float = 3.5) -> np.ndarray:
  r = int(truncate * sigma + 0.5)
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _blur(x, k):
  """Separable Gaussian over H, W of (H, W, C) with mirror padding ('symmetric', as
  scipy.ndimage's default 'reflect'), so the result matches skimage's SSIM filter."""
  r = len(k) // 2
  xp = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="symmetric")
  h, w = x.shape[:2]
  rows = sum(float(k[i]) * xp[i:i + h] for i in range(len(k)))
  return sum(float(k[j]) * rows[:, j:j + w] for j in range(len(k)))


def ssim(x, y, data_range: float = 1.0, sigma: float = 1.5):
  """Mean SSIM (Wang et al. 2004), Gaussian window sigma 1.5, K1=0.01, K2=0.03, per channel,
  population covariances, the window radius cropped from each border -- the same number as
  skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"ssim: shapes differ: {x.shape} vs {y.shape}")
  if x.ndim == 2:
    x, y = x[..., None], y[..., None]
  k = _gauss_1d(sigma)
  r = len(k) // 2
  if min(x.shape[:2]) <= 2 * r:
    raise ValueError(f"ssim: image {x.shape[:2]} too small for an {len(k)}-pixel window")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = _blur(x, k), _blur(y, k)
  vx = _blur(x * x, k) - mx * mx
  vy = _blur(y * y, k) - my * my
  cxy = _blur(x * y, k) - mx * my
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s[r:-r, r:-r])
