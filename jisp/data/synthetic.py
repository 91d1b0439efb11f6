"""An in-memory source of (sRGB, RAW) patch pairs from a simple parametric camera.

No files, numpy only: it is the test source and the fallback when no prepared shards
are given. Every example is a pure function of (seed, split, batch number, global
example index), so each process generates exactly its own share of the global batch and
a resumed run sees the same examples an unbroken run would.

The camera: a scene of smooth colour gradients plus a few hard-edged shapes in linear
camera RGB; RAW target = camera RGB white-balanced and gamma-compressed (like the
`invisp` protocol); sRGB = colour-corrected, gamma and S-curve toned, quantised to
8 bits (what a camera JPEG engine roughly does). With `camera=True` each batch also
carries the camera's features ("rgb2cam" (b, 3, 3), "wb" (b, 3), as
jisp.core.camera.camera_features): one fixed camera, white balance already applied (gains 1).
"""
from __future__ import annotations

import numpy as np

from jisp.core.camera import SYNTHETIC_CAM2RGB, camera_features
from jisp.data.indexed_source import IndexedBatchSource

_SPLIT_IDS = {"train": 0, "test": 1, "eval": 1}


def _scene(rng: np.random.Generator, p: int) -> np.ndarray:
  yy, xx = np.meshgrid(np.linspace(0, 1, p, dtype=np.float32),
                       np.linspace(0, 1, p, dtype=np.float32), indexing="ij")
  img = np.empty((p, p, 3), np.float32)
  base = rng.uniform(0.05, 0.6, size=3).astype(np.float32)
  for c in range(3):
    f = rng.uniform(0.3, 3.0, size=(3, 2)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    a = rng.uniform(0.02, 0.15, size=3).astype(np.float32)
    field = sum(a[k] * np.cos(2 * np.pi * (f[k, 0] * xx + f[k, 1] * yy) + ph[k]) for k in range(3))
    img[..., c] = base[c] + field
  for _ in range(rng.integers(1, 4)):  # hard edges: discs and rectangles
    col = rng.uniform(0.0, 0.9, size=3).astype(np.float32)
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
    if rng.random() < 0.5:
      m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    else:
      m = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.3, 1.0))
    img[m] = col
  return np.clip(img, 0.0, 1.0)


def make_pair(rng: np.random.Generator, p: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (rgb, raw), both float32 (p, p, 3) in [0, 1]."""
  cam = _scene(rng, p)                                   # white-balanced camera RGB
  exposure = rng.uniform(0.6, 1.0)
  cam = np.clip(cam * exposure, 0.0, 1.0)
  raw = cam ** (1 / 2.2)                                 # invisp-style RAW target
  lin = np.clip(cam @ SYNTHETIC_CAM2RGB.T, 0.0, 1.0)
  g = lin ** (1 / 2.2)
  rgb = 3 * g ** 2 - 2 * g ** 3                          # S-curve tone
  rgb = np.round(rgb * 255.0) / 255.0                    # 8-bit output
  return rgb.astype(np.float32), raw.astype(np.float32)


class SyntheticSource(IndexedBatchSource):
  """Process-local batches of the global batch number `self.batches`."""

  def __init__(self, *, patch_size: int, local_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               camera: bool = False):
    self.patch = patch_size
    if camera:
      from jisp.isp.prior import SYNTHETIC_PROFILE  # jax: only when features are asked for
      self.camera = camera_features(SYNTHETIC_PROFILE)
    else:
      self.camera = None
    self.local_batch = local_batch
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.split_id = _SPLIT_IDS[split]
    self.batches = 0

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    rgbs, raws = [], []
    first = self.process_index * self.local_batch
    for i in range(first, first + self.local_batch):
      rng = np.random.default_rng([self.seed, self.split_id, n, i])
      rgb, raw = make_pair(rng, self.patch)
      rgbs.append(rgb)
      raws.append(raw)
    out = {"rgb": np.stack(rgbs), "raw": np.stack(raws)}
    if self.camera is not None:
      out.update({k: np.broadcast_to(v, (self.local_batch,) + v.shape).copy()
                  for k, v in self.camera.items()})
    return out
