"""Split an image into square patches and merge per-patch predictions back, seamlessly.

Two layouts:
  overlap  patches of side P every P - overlap pixels, the last row/column of patches
           aligned to the image's far edge (so no padding beyond P is needed); predictions
           are blended with a smooth window that ramps over the overlap, so a patch-wise
           colour offset fades across the band instead of jumping at a tile edge.
  grid     the DDPM paper's protocol: non-overlapping P x P tiles on a regular grid, the
           image mirror-padded to a multiple of P and cropped back after the merge.

Fast samplers give each patch a slightly different colour (the paper's Fig. 5 "blocky"
artefacts). Besides overlap, `shared_noise` gives every patch the initial noise of the
pixels it covers, drawn once for the whole image, so overlapping patches start from the
same x_T where they overlap and a deterministic sampler sees consistent inputs there.

Output scale: a predictor may return patches at 1/s of the input's resolution (packed
RAW at half the sRGB's, IOSpec.out_scale). `merge` reads s off the patches' shape and
places each at its position / s; a layout made with `align=s` keeps every position a
multiple of s (the image is mirror-padded as far as that needs), so this is exact.

numpy in, numpy out; the predictor is any `f(patches, init_noise) -> patches`.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the patches of one image lie. (ys x xs) patches in row-major order; every
  position a multiple of `align`."""
  height: int
  width: int
  patch: int
  overlap: int
  grid: bool
  ys: tuple
  xs: tuple
  align: int = 1

  @property
  def padded(self) -> tuple[int, int]:
    return (max(self.ys) + self.patch, max(self.xs) + self.patch)

  @property
  def positions(self) -> list[tuple[int, int]]:
    return [(y, x) for y in self.ys for x in self.xs]

  def __len__(self) -> int:
    return len(self.ys) * len(self.xs)


def axis_starts(length: int, patch: int, overlap: int, align: int = 1) -> list[int]:
  """Patch starts along one axis: every patch - overlap pixels, the last one flush with the
  far edge (it may overlap its neighbour by more). A short axis gets one (padded) patch.
  align > 1: the last start is rounded up to a multiple of align (the patch then reaches
  past the edge into the mirror padding)."""
  if length <= patch:
    return [0]
  stride = patch - overlap
  last = -(-(length - patch) // align) * align
  starts = list(range(0, last + 1, stride))
  if starts[-1] != last:
    starts.append(last)
  return starts


def make_layout(height: int, width: int, patch: int, overlap: int = 0,
                grid: bool = False, align: int = 1) -> Layout:
  """align: keep every position a multiple of it (a predictor's output scale); the patch
  and the stride patch - overlap must be multiples of it too."""
  height, width, patch, overlap = int(height), int(width), int(patch), int(overlap)
  align = int(align)
  if height < 1 or width < 1:
    raise ValueError(f"tiling: empty image {height}x{width}")
  if patch < 1:
    raise ValueError(f"tiling: patch must be >= 1, got {patch}")
  if align < 1 or patch % align or (patch - overlap) % align:
    raise ValueError(f"tiling: patch {patch} and stride {patch - overlap} must be multiples "
                     f"of the output scale {align}")
  if grid:
    if overlap:
      raise ValueError("tiling: the regular-grid layout has no overlap (got overlap="
                       f"{overlap})")
    ys = tuple(range(0, height, patch))
    xs = tuple(range(0, width, patch))
  else:
    if not 0 <= overlap < patch:
      raise ValueError(f"tiling: overlap must be in [0, patch={patch}), got {overlap}")
    ys = tuple(axis_starts(height, patch, overlap, align))
    xs = tuple(axis_starts(width, patch, overlap, align))
  return Layout(height, width, patch, overlap, bool(grid), ys, xs, align)


def blend_window(patch: int, overlap: int) -> np.ndarray:
  """(P, P) float32 merge weights: 1 inside, a sin^2 ramp over `overlap` pixels at each
  edge. For two patches overlapping by exactly `overlap` the ramps sum to 1 (sin^2 + cos^2),
  so the blend is a partition of unity; weights stay > 0, so a pixel covered by a single
  patch (image borders) gets that patch's value exactly after normalisation."""
  w = np.ones(patch, np.float64)
  if overlap > 0:
    ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
    w[:overlap] = ramp
    w[patch - overlap:] = np.minimum(w[patch - overlap:], ramp[::-1])
  return np.outer(w, w).astype(np.float32)


def pad_image(img, layout: Layout) -> np.ndarray:
  """Mirror-pad (H, W, C) up to the layout's padded size (bottom/right only)."""
  img = np.asarray(img)
  ph, pw = layout.padded
  if img.shape[:2] != (layout.height, layout.width):
    raise ValueError(f"tiling: image is {img.shape[:2]}, layout is for "
                     f"{(layout.height, layout.width)}")
  pad = [(0, ph - layout.height), (0, pw - layout.width)] + [(0, 0)] * (img.ndim - 2)
  return np.pad(img, pad, mode="symmetric") if any(p[1] for p in pad) else img


def split(img, layout: Layout) -> np.ndarray:
  """(H, W, C) -> (N, P, P, C) patches in `layout.positions` order."""
  x = pad_image(img, layout)
  p = layout.patch
  return np.stack([x[y:y + p, xx:xx + p] for y, xx in layout.positions])


def output_scale(layout: Layout, out_patch: int) -> int:
  """s of patches of side `out_patch` predicted for this layout (module docstring)."""
  p = layout.patch
  s = p // out_patch if out_patch > 0 else 0
  if s < 1 or s * out_patch != p:
    raise ValueError(f"tiling: output patches of {out_patch} px do not divide the "
                     f"{p}-px input patches")
  if s > 1 and (layout.overlap % s or any(v % s for v in layout.ys + layout.xs)):
    raise ValueError(f"tiling: patch positions are not multiples of the output scale {s} "
                     f"(make the layout with align={s})")
  return s


def merge(patches, layout: Layout) -> np.ndarray:
  """(N, P/s, P/s, C) -> (H/s, W/s, C) (s = output_scale; H/s rounded down): weighted
  mean of every patch covering each pixel."""
  patches = np.asarray(patches, np.float32)
  if patches.ndim != 4 or patches.shape[0] != len(layout) or \
      patches.shape[1] != patches.shape[2]:
    raise ValueError(f"tiling: expected {len(layout)} square patches, got {patches.shape}")
  s = output_scale(layout, patches.shape[1])
  p = layout.patch // s
  ph, pw = (v // s for v in layout.padded)
  win = blend_window(p, layout.overlap // s)[..., None]
  acc = np.zeros((ph, pw, patches.shape[-1]), np.float64)
  wsum = np.zeros((ph, pw, 1), np.float64)
  for (y, x), patch in zip(layout.positions, patches):
    y, x = y // s, x // s
    acc[y:y + p, x:x + p] += win * patch
    wsum[y:y + p, x:x + p] += win
  out = acc / wsum
  return out[:layout.height // s, :layout.width // s].astype(np.float32)


def initial_noise(key, layout: Layout, channels: int, shared: bool) -> np.ndarray:
  """(N, P, P, C) standard normal starting noise.

  shared=False: independent per patch. shared=True: one field over the padded image, cut
  like the image, so overlapping patches carry the same noise on the pixels they share.
  """
  p = layout.patch
  if shared:
    ph, pw = layout.padded
    field = np.asarray(jax.random.normal(key, (ph, pw, channels), np.float32))
    return np.stack([field[y:y + p, x:x + p] for y, x in layout.positions])
  return np.asarray(jax.random.normal(key, (len(layout), p, p, channels), np.float32))


def reconstruct(img, predict_fn, layout: Layout, *, key, noise_channels: int = 3,
                shared_noise: bool = False) -> np.ndarray:
  """Tile `img`, run `predict_fn(patches, init_noise) -> patches` once over all patches
  (the predictor chunks them), merge. init_noise is None for noise_channels=0
  (deterministic predictors); it is at the input's resolution. Returns (H/s, W/s, C)
  float32, C the predictor's channels, s its output scale (1: (H, W, C))."""
  patches = split(img, layout)
  noise = initial_noise(key, layout, noise_channels, shared_noise) if noise_channels else None
  return merge(predict_fn(patches, noise), layout)


def tile_edges(layout: Layout) -> tuple[list[int], list[int]]:
  """Rows and columns r where a patch begins or ends between pixel r-1 and r (inside the
  image): where a patch-wise offset would show up as a seam."""
  p = layout.patch
  rows = sorted({v for y in layout.ys for v in (y, y + p) if 0 < v < layout.height})
  cols = sorted({v for x in layout.xs for v in (x, x + p) if 0 < v < layout.width})
  return rows, cols


def seam_ratio(pred, layout: Layout, true=None) -> float:
  """How much larger the jump between neighbouring pixels is across tile edges than
  elsewhere (1 = no visible seams). With `true`, measured on the error pred - true, so
  image content does not count."""
  x = np.asarray(pred, np.float64)
  if true is not None:
    x = x - np.asarray(true, np.float64)
  x = x.mean(axis=-1) if x.ndim == 3 else x
  dy = np.abs(np.diff(x, axis=0))  # dy[r-1] is between rows r-1 and r
  dx = np.abs(np.diff(x, axis=1))
  rows, cols = tile_edges(layout)
  s = layout.height // x.shape[0] if x.shape[0] < layout.height else 1
  if s > 1:  # a prediction at 1/s of the input's resolution: edges at position / s
    rows = [r // s for r in rows if 0 < r // s < x.shape[0]]
    cols = [c // s for c in cols if 0 < c // s < x.shape[1]]
  ry = np.zeros(dy.shape[0], bool)
  ry[[r - 1 for r in rows]] = True
  cx = np.zeros(dx.shape[1], bool)
  cx[[c - 1 for c in cols]] = True
  edge = np.concatenate([dy[ry].ravel(), dx[:, cx].ravel()])
  inner = np.concatenate([dy[~ry].ravel(), dx[:, ~cx].ravel()])
  if edge.size == 0 or inner.size == 0:
    return 1.0
  return float(edge.mean() / max(inner.mean(), 1e-12))
