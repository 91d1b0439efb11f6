"""The look round trip: how closely a standard rendering of a reconstructed RAW reproduces
the sRGB photo it was reconstructed from (cycle consistency; no ground-truth RAW needed).

The rendering is the protocol's own, `jisp.data.raw_io.render_srgb` (LibRaw: camera white
balance, no auto-brightness, sRGB primaries, BT.709 gamma, 8 bits), applied to a DNG that
jisp writes. The scores, over the whole image:
  psnr    10 log10(1 / MSE) in the [0, 1] range (jisp.core.metrics.psnr's definition),
          computed exactly on 8-bit codes: infinite for identical images
  de2000  mean CIEDE2000 colour difference (scikit-image; CIE Lab, D65) over all pixels

Rendering path identity. A DNG of a capture's own RAW must render to exactly what LibRaw
rendered for the capture. Two things can make it differ: the white balance, since a DNG
stores AsShotNeutral as rationals while LibRaw used the source's multipliers (so
`render_mosaic` / `render_dng` take the source's multipliers, `source_wb`, and hand them to
LibRaw as they were); and the orientation, since demosaicking does not commute with
turning the image (so the mosaic is written in the source's sensor order with its
Orientation tag, `sensor_order`). Both DNG files jisp writes (the virtual camera's and
reconstructions) then render bit-identically. A native camera file (NEF, CRW) can still
differ in a few pixels: LibRaw takes that camera's colour matrix from its own table in
single precision, but a DNG's from the ColorMatrix tag, and rounds the two differently.

rawpy and scikit-image (the `data` extra) are imported when used.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

# Pixels per CIE Lab conversion: bounds the float64 temporaries of a 24-MP comparison.
_CHUNK_PIXELS = 1 << 18
# A reference whose values lie this close to k/255 is an 8-bit image stored as floats.
_EIGHT_BIT_TOL = 1e-3

# EXIF orientation -> the orientation that undoes it (5 and 7 are their own inverse).
_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def sensor_order(img, orientation: int) -> np.ndarray:
  """The inverse of jisp.core.images.apply_orientation: an upright (H, W, ...) array back
  in the stored order that `orientation` turns upright."""
  from jisp.core.images import apply_orientation
  o = int(orientation)
  if o not in _INVERSE:
    raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
  return apply_orientation(img, _INVERSE[o])


def source_wb(cap) -> tuple:
  """The white-balance multipliers render_srgb gave LibRaw for a capture (R, G, B, G2):
  the camera's own as LibRaw read them, else the capture's chosen gains."""
  if cap.wb_source == "camera":
    return tuple(float(x) for x in cap.camera_wb)
  r, g, b = (float(x) for x in cap.wb)
  return (r, g, b, g)


def render_dng(path, wb=None) -> np.ndarray:
  """uint8 (H, W, 3) upright: render_srgb of a DNG; wb: LibRaw multipliers (R, G, B[, G2])
  to use instead of the file's AsShotNeutral (see the module doc)."""
  from jisp.data import raw_io
  cap = raw_io.read_capture(path)
  if wb is not None:
    w = np.asarray(wb, np.float64).reshape(-1)
    # render_srgb passes a non-camera balance to LibRaw as (R, G, B, G); LibRaw replaces
    # a missing second green by the first, so the two spellings are the same multipliers.
    cap = dataclasses.replace(cap, wb=w[:3], wb_source="source")
  return raw_io.render_srgb(cap)


def render_mosaic(codes, profile, *, orientation: int = 1, wb=None) -> np.ndarray:
  """uint8 (H, W, 3) upright rendering of a uint16 Bayer mosaic (sensor order, the
  profile's CFA layout and levels, `orientation` its EXIF code), through a temporary DNG
  written as jisp writes every DNG."""
  from jisp.core import dng
  with tempfile.TemporaryDirectory(prefix="jisp-look-") as d:
    path = Path(d) / "look.dng"
    dng.write_dng(path, codes, profile.pattern, profile.black_level, profile.white_level,
                  dng.neutral_from_wb(profile.wb), profile.color_matrix,
                  orientation=int(orientation), make="jisp", model="look round trip")
    return render_dng(path, wb)


def _codes_of_reference(ref: np.ndarray) -> np.ndarray:
  """Reference rows as float64 0..255 codes; an 8-bit image kept as floats snaps back to
  its exact codes, so identical images compare as identical."""
  if ref.dtype == np.uint8:
    return ref.astype(np.float64)
  c = np.clip(ref.astype(np.float64), 0.0, 1.0) * 255.0
  near = np.rint(c)
  return near if np.max(np.abs(c - near), initial=0.0) < _EIGHT_BIT_TOL else c


def look_metrics(rendered, reference) -> dict:
  """{'psnr', 'de2000'} of a rendering (uint8 (H, W, 3)) against the photo (uint8, or float
  in [0, 1]) of the same shape; see the module doc."""
  from skimage.color import deltaE_ciede2000, rgb2lab
  a = np.asarray(rendered)
  r = np.asarray(reference)
  if a.dtype != np.uint8:
    raise ValueError(f"look: the rendering must be uint8, got {a.dtype}")
  if a.shape != r.shape or a.ndim != 3 or a.shape[-1] != 3:
    raise ValueError(f"look: shapes differ or are not (H, W, 3): {a.shape} vs {r.shape}")
  h, w = a.shape[:2]
  rows = max(1, _CHUNK_PIXELS // max(w, 1))
  sse, de_sum = 0.0, 0.0
  for y in range(0, h, rows):
    ca = a[y:y + rows].astype(np.float64)
    cr = _codes_of_reference(r[y:y + rows])
    sse += float(np.sum(np.square(ca - cr)))
    de = deltaE_ciede2000(rgb2lab(ca / 255.0), rgb2lab(cr / 255.0))
    de_sum += float(np.sum(de))
  n = h * w
  mse = sse / (n * 3) / 255.0 ** 2
  return {"psnr": math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse),
          "de2000": de_sum / n}


def describe(m: dict) -> str:
  """'PSNR 31.20 dB, mean CIEDE2000 2.10' of look_metrics' result."""
  p = "inf" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f}"
  return f"PSNR {p} dB, mean CIEDE2000 {m['de2000']:.2f}"


def check_available() -> None:
  """OptionError (one line) when the look round trip cannot run here."""
  from importlib.util import find_spec
  from jisp.core.errors import OptionError
  missing = [m for m in ("rawpy", "skimage") if find_spec(m) is None]
  if missing:
    raise OptionError(f"the look round trip needs {' and '.join(missing)} (pip install "
                      "'jisp[data]')")
