"""Bayer colour filter array: mosaic, bilinear demosaic, 4-channel packing.

All functions are pure jnp and jit-able (the `pattern` string is static: close over it or
mark it static). Numpy input is accepted. Images are (..., H, W, 3) and mosaics (..., H, W):
any leading batch dims are carried through. Colour ids: 0=R, 1=G, 2=B.

A pattern names the 2x2 CFA tile read row-major from the top-left pixel, e.g. "GRBG" means
pixel (0,0) is green, (0,1) red, (1,0) blue, (1,1) green.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from jisp.core.camera import BAYER_PATTERNS as PATTERNS, check_pattern
_COLOUR_ID = {"R": 0, "G": 1, "B": 2}

# Packed channel order is fixed whatever the layout, so that a network trained on one layout
# sees the same semantics on another: R, G on the red row (Gr), G on the blue row (Gb), B.
PACKED_ORDER = ("R", "Gr", "Gb", "B")

# Bilinear interpolation kernels (unnormalised integers so that the sums stay exact).
_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)


def channel_index(pattern: str) -> np.ndarray:
  """(2, 2) int array of the colour id (0=R, 1=G, 2=B) sampled at each site of the tile."""
  p = check_pattern(pattern)
  return np.array([[_COLOUR_ID[p[0]], _COLOUR_ID[p[1]]],
                   [_COLOUR_ID[p[2]], _COLOUR_ID[p[3]]]], np.int32)


def packed_positions(pattern: str) -> list[tuple[int, int]]:
  """(row, col) offsets inside the 2x2 tile of the R, Gr, Gb, B samples, in packed order."""
  idx = channel_index(pattern)
  pos = {}
  for i in range(2):
    for j in range(2):
      c = int(idx[i, j])
      if c == 0:
        pos["R"] = (i, j)
      elif c == 2:
        pos["B"] = (i, j)
      else:  # a green is "Gr" when its row also holds the red sample
        pos["Gr" if 0 in idx[i] else "Gb"] = (i, j)
  return [pos[k] for k in PACKED_ORDER]


def cfa_mask(pattern: str, h: int, w: int) -> np.ndarray:
  """(h, w, 3) float32 one-hot of the colour each site samples.

  Returned as numpy: it depends only on static shapes, so inside jit it is a constant.
  """
  idx = channel_index(pattern)
  tile = np.eye(3, dtype=np.float32)[idx]  # (2, 2, 3)
  reps = (-(-h // 2), -(-w // 2), 1)
  return np.tile(tile, reps)[:h, :w]


def mosaic(rgb, pattern: str):
  """f_Bayer: (..., H, W, 3) -> (..., H, W) keeping at each site the CFA's colour."""
  rgb = jnp.asarray(rgb)
  if rgb.ndim < 3 or rgb.shape[-1] != 3:
    raise ValueError(f"mosaic expects (..., H, W, 3), got shape {rgb.shape}")
  m = cfa_mask(pattern, rgb.shape[-3], rgb.shape[-2])
  return jnp.sum(rgb * m, axis=-1)


def _conv3x3_reflect(x, k: np.ndarray):
  """3x3 correlation over the last two axes with mirror padding (no edge repeat).

  Mirror padding maps pixel -1 to pixel 1, which has the same parity, so the padded border
  continues the CFA lattice and the interior formula holds at the image edges too.
  """
  h, w = x.shape[-2:]
  pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
  xp = jnp.pad(x, pad, mode="reflect")
  out = jnp.zeros_like(x)
  for i in range(3):
    for j in range(3):
      if k[i, j] != 0:
        out = out + float(k[i, j]) * xp[..., i:i + h, j:j + w]
  return out


def demosaic_bilinear(mosaic_img, pattern: str):
  """Bilinear demosaic (..., H, W) -> (..., H, W, 3), float32.

  Each colour plane is the mosaic masked to that colour's sites, convolved with the classic
  kernel ([[1,2,1],[2,4,2],[1,2,1]] for R/B, the cross [[0,1,0],[1,4,1],[0,1,0]] for G) and
  divided by the same convolution of the mask (normalised weights; with mirror padding this
  is the textbook /4 everywhere). Sites that sample colour c return the mosaic value exactly.
  """
  x = jnp.asarray(mosaic_img, jnp.float32)
  if x.ndim < 2:
    raise ValueError(f"demosaic expects (..., H, W), got shape {x.shape}")
  h, w = x.shape[-2:]
  if h < 2 or w < 2:
    raise ValueError(f"demosaic needs H, W >= 2, got {(h, w)}")
  m = cfa_mask(pattern, h, w)
  planes = []
  for c, k in ((0, _K_RB), (1, _K_G), (2, _K_RB)):
    mc = m[..., c]
    num = _conv3x3_reflect(x * mc, k)
    den = _conv3x3_reflect(jnp.asarray(mc), k)
    # Known sites are taken verbatim, so exactness never depends on float rounding.
    planes.append(jnp.where(mc > 0, x, num / den))
  return jnp.stack(planes, axis=-1)


def pack(mosaic_img, pattern: str):
  """(..., H, W) -> (..., H/2, W/2, 4) in R, Gr, Gb, B order whatever the layout."""
  x = jnp.asarray(mosaic_img)
  h, w = x.shape[-2:]
  if h % 2 or w % 2:
    raise ValueError(f"pack needs even H, W, got {(h, w)}")
  return jnp.stack([x[..., i::2, j::2] for i, j in packed_positions(pattern)], axis=-1)


def unpack(packed, pattern: str):
  """Exact inverse of `pack`: (..., H/2, W/2, 4) -> (..., H, W)."""
  p = jnp.asarray(packed)
  if p.ndim < 3 or p.shape[-1] != 4:
    raise ValueError(f"unpack expects (..., H/2, W/2, 4), got shape {p.shape}")
  at = {pos: p[..., k] for k, pos in enumerate(packed_positions(pattern))}
  top = jnp.stack([at[(0, 0)], at[(0, 1)]], axis=-1)     # (..., h2, w2, 2)
  bottom = jnp.stack([at[(1, 0)], at[(1, 1)]], axis=-1)
  full = jnp.stack([top, bottom], axis=-3)                # (..., h2, 2, w2, 2)
  h2, w2 = p.shape[-3:-1]
  return full.reshape(p.shape[:-3] + (2 * h2, 2 * w2))
