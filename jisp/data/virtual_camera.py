"""An offline virtual camera: realistic Bayer captures made from bundled natural photos.

Each capture unprocesses an sRGB photo (UPI, jisp.isp.unprocess) with per-image random camera
colour, white balance and noise, mosaics it with a random CFA layout, adds heteroscedastic
noise and quantises to 12- or 14-bit codes above a black level. The result carries the
metadata a DNG needs, so demos and tests have RAW files without downloading anything.

Imports only numpy, jax and jisp.isp at module load; scikit-image (photos, resizing) and
jisp.core.dng are imported when used. Everything is a deterministic function of the seed.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jisp.core.camera import XYZ_TO_SRGB
from jisp.isp import bayer
from jisp.isp import unprocess as up

# Colour natural photographs shipped inside the scikit-image wheel (no network needed).
# "cat" is the same picture as "chelsea" and motorcycle_right nearly repeats the left view,
# so neither is listed; microscopy/astronomy/synthetic images are left out on purpose.
_SOURCES = {
    "astronaut": lambda d: d.astronaut(),
    "chelsea": lambda d: d.chelsea(),
    "coffee": lambda d: d.coffee(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],
    "rocket": lambda d: d.rocket(),
}

BIT_DEPTHS = (12, 14)
# Black levels of real 12-bit cameras; scaled by 2^(bits-12) for 14-bit captures.
_BLACK_LEVELS_12BIT = (64, 128, 256, 512)


def list_source_images() -> list[str]:
  """Names accepted by `load_source_image`, sorted."""
  return sorted(_SOURCES)


def load_source_image(name: str) -> np.ndarray:
  """A bundled photo as float32 (H, W, 3) sRGB in [0, 1]."""
  if name not in _SOURCES:
    raise ValueError(f"unknown source image {name!r}; available: {list_source_images()}")
  from skimage import data  # lazy: heavy import, only needed here
  img = np.asarray(_SOURCES[name](data))
  return (img[..., :3].astype(np.float32) / 255.0)


def _as_key(key_or_seed):
  if isinstance(key_or_seed, (int, np.integer)):
    return jax.random.key(int(key_or_seed))
  return key_or_seed


def _even_crop(img: np.ndarray) -> np.ndarray:
  h, w = img.shape[:2]
  return img[:h - h % 2, :w - w % 2]


@jax.jit
def _render(img, k_cam, k_noise, cfa):
  """Camera draw -> linear camera RGB -> mosaic -> noise, as one compiled call.

  The CFA enters as a traced one-hot mask (not a static pattern string) so that one
  compilation per image size serves all four layouts.
  """
  params = up.random_camera_params(k_cam)
  linear = up.unprocess(img, params)
  clean = (linear * cfa).sum(-1)
  noisy = up.add_noise(k_noise, clean, params.shot_noise, params.read_noise)
  return params, linear, noisy


def synthesize_capture(rgb, key_or_seed, pattern: str | None = None,
                       bits: int | None = None) -> dict:
  """One virtual RAW capture of an sRGB image.

  Args:
    rgb: (H, W, 3) sRGB in [0, 1]; odd H or W lose their last row/column.
    key_or_seed: int seed or jax PRNG key; all randomness derives from it.
    pattern: Bayer layout, or None to draw one from the seed.
    bits: 12 or 14, or None to draw one from the seed.

  Returns a dict: mosaic (uint16 HxW), pattern, bits, black_level (int), white_level (int),
  as_shot_neutral (3,) = 1 / wb_gains (G = 1), color_matrix (3,3) XYZ -> camera
  (DNG ColorMatrix1 under D65: rgb2cam @ XYZ->sRGB), camera_params (CameraParams) and
  linear (noise-free linear camera RGB, float32 HxWx3, before the mosaic).
  """
  img = np.asarray(rgb, np.float32)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"synthesize_capture expects (H, W, 3) sRGB, got shape {img.shape}")
  img = _even_crop(img)
  if min(img.shape[:2]) < 2:
    raise ValueError(f"image too small for a 2x2 CFA: {img.shape}")
  k_pat, k_bits, k_black, k_cam, k_noise = jax.random.split(_as_key(key_or_seed), 5)

  # Draws are made whether or not a value is given, so fixing the pattern does not change
  # the camera drawn for the same seed.
  drawn_pat = bayer.PATTERNS[int(jax.random.randint(k_pat, (), 0, len(bayer.PATTERNS)))]
  drawn_bits = BIT_DEPTHS[int(jax.random.randint(k_bits, (), 0, len(BIT_DEPTHS)))]
  pattern = drawn_pat if pattern is None else bayer.check_pattern(pattern)
  bits = drawn_bits if bits is None else bits
  if bits not in BIT_DEPTHS:
    raise ValueError(f"bits must be one of {BIT_DEPTHS}, got {bits}")
  i_black = int(jax.random.randint(k_black, (), 0, len(_BLACK_LEVELS_12BIT)))
  black = _BLACK_LEVELS_12BIT[i_black] << (bits - 12)
  white = 2 ** bits - 1

  cfa = bayer.cfa_mask(pattern, *img.shape[:2])
  params, linear, noisy = _render(img, k_cam, k_noise, cfa)
  codes = up.quantize(noisy, bits, black)

  rgb2cam = np.asarray(params.rgb2cam, np.float64)
  gains = np.asarray(params.wb_gains, np.float64)
  neutral = 1.0 / gains
  return {
      "mosaic": np.asarray(codes),
      "pattern": pattern,
      "bits": bits,
      "black_level": int(black),
      "white_level": int(white),
      "as_shot_neutral": neutral / neutral[1],
      "color_matrix": rgb2cam @ XYZ_TO_SRGB,
      "camera_params": params,
      "linear": np.asarray(linear, np.float32),
  }


def _fit(img: np.ndarray, size, key) -> np.ndarray:
  """Scale `img` to cover (th, tw) (anti-aliased when shrinking), then crop at a seeded spot."""
  th, tw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  h, w = img.shape[:2]
  scale = max(th / h, tw / w)
  if abs(scale - 1.0) > 1e-9:
    from skimage.transform import resize  # lazy
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    img = resize(img, (nh, nw), order=1, anti_aliasing=scale < 1, preserve_range=True)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
  h, w = img.shape[:2]
  ky, kx = jax.random.split(key)
  y0 = int(jax.random.randint(ky, (), 0, h - th + 1))
  x0 = int(jax.random.randint(kx, (), 0, w - tw + 1))
  return img[y0:y0 + th, x0:x0 + tw]


def virtual_capture(index: int, seed: int, size=None, _cache: dict | None = None):
  """(source name, capture dict) of image `index` of the virtual RAW set for `seed`.

  Image i uses source photo i mod N (mirrored on odd passes so repeats differ) and a camera
  drawn from fold_in(key(seed), i). `size` (int or (h, w)) scales and crops the photo to that
  size at a seeded position to keep demos small.
  """
  names = list_source_images()
  name = names[index % len(names)]
  cache = {} if _cache is None else _cache
  if name not in cache:
    cache[name] = load_source_image(name)
  img = cache[name]
  if (index // len(names)) % 2:
    img = img[:, ::-1]
  k_crop, k_cap = jax.random.split(jax.random.fold_in(jax.random.key(int(seed)), index))
  if size is not None:
    img = _fit(img, size, k_crop)
  return name, synthesize_capture(img, k_cap)


def write_virtual_raw_dir(out_dir, n_images: int, seed: int, size=None) -> list[Path]:
  """Write `n_images` virtual-camera DNGs (see `virtual_capture`) into `out_dir`.

  Returns the paths, named virtual_<index>_<source>.dng. Writes are atomic (jisp.core.dng
  writes a temporary file in the same folder and renames it).
  """
  from jisp.core import dng  # lazy: tifffile stays out of import time

  if n_images < 0:
    raise ValueError(f"n_images must be >= 0, got {n_images}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cache: dict[str, np.ndarray] = {}
  paths = []
  for i in range(n_images):
    name, cap = virtual_capture(i, seed, size, cache)
    path = out / f"virtual_{i:04d}_{name}.dng"
    # write_dng itself writes a temporary file in the same folder and renames it.
    dng.write_dng(path, cap["mosaic"], cap["pattern"], cap["black_level"],
                  cap["white_level"], cap["as_shot_neutral"], cap["color_matrix"],
                  orientation=1, make="jisp", model="virtual camera")
    paths.append(path)
  return paths
