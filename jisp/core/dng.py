"""Bayer mosaics out: minimal uncompressed DNG files that LibRaw (rawpy) reads back exactly.

Written with tifffile (one uncompressed strip, typed DNG tags) rather than pidng: pidng
stores the image as a single tile of arbitrary size, fixes BlackLevel/WhiteLevel to SHORT
and prints tag errors instead of raising. The tests check that rawpy returns the identical
mosaic, CFA layout, levels and white balance for every Bayer layout.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jisp.core.camera import BAYER_PATTERNS
from jisp.core.fileio import atomic_write_bytes
_CFA_CODE = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes
_D65 = 21                              # EXIF LightSource code of CalibrationIlluminant
_DEN = 1_000_000                       # rational denominator: 1e-6 resolution

# DNG tag codes.
_T = dict(Make=271, Model=272, Orientation=274, CFARepeatPatternDim=33421,
          CFAPattern=33422, DNGVersion=50706, DNGBackwardVersion=50707,
          UniqueCameraModel=50708, CFAPlaneColor=50710, CFALayout=50711,
          LinearizationTable=50712, BlackLevelRepeatDim=50713, BlackLevel=50714,
          WhiteLevel=50717, ColorMatrix1=50721, AsShotNeutral=50728,
          CalibrationIlluminant1=50778)


def _rationals(values, signed: bool):
  """Flat (num, den, num, den, ...) for TIFF (S)RATIONAL tags."""
  out = []
  for v in np.asarray(values, np.float64).reshape(-1):
    out += [int(round(v * _DEN)), _DEN]
  lim = 2**31 - 1 if signed else 2**32 - 1
  if any(abs(x) > lim for x in out[0::2]):
    raise ValueError(f"value out of range for a DNG rational: {values!r}")
  return tuple(out)


def _as_uint16_mosaic(mosaic) -> np.ndarray:
  m = np.asarray(mosaic)
  if m.ndim != 2:
    raise ValueError(f"mosaic must be 2-D (H, W), got shape {m.shape}")
  h, w = m.shape
  if h < 2 or w < 2 or h % 2 or w % 2:
    raise ValueError(f"mosaic dims must be even and >= 2 (whole 2x2 CFA tiles), got {h}x{w}")
  if m.dtype == np.uint16:
    return m
  if m.dtype.kind not in "biuf":
    raise ValueError(f"mosaic dtype {m.dtype} cannot be stored as uint16")
  if m.dtype.kind == "f" and (not np.all(np.isfinite(m)) or np.any(m != np.round(m))):
    raise ValueError("float mosaic must hold whole numbers (raw digital values), "
                     "not e.g. normalised [0, 1] data")
  if m.size and (m.min() < 0 or m.max() > 65535):
    raise ValueError(f"mosaic values {m.min()}..{m.max()} do not fit uint16")
  return m.astype(np.uint16)


def _ascii(name: str, value) -> str:
  s = str(value)
  if not s or not s.isascii() or "\x00" in s:
    raise ValueError(f"{name} must be a non-empty ASCII string, got {value!r}")
  return s


def dng_tags(shape, pattern, black_level, white_level, as_shot_neutral, color_matrix,
             orientation=1, make="jisp", model="jisp", unique_model=None,
             linearization=None) -> list:
  """Validated tifffile `extratags` for a Bayer DNG (everything except the pixels)."""
  h, w = shape
  if not isinstance(pattern, str) or pattern.upper() not in BAYER_PATTERNS:
    raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {BAYER_PATTERNS}")
  pattern = pattern.upper()

  white = float(white_level)
  if not (np.isfinite(white) and white == round(white) and 1 <= white <= 65535):
    raise ValueError(f"white_level must be an integer in 1..65535, got {white_level!r}")
  black = np.asarray(black_level, np.float64).reshape(-1)
  if black.size not in (1, 4) or not np.all(np.isfinite(black)) or np.any(black < 0):
    raise ValueError("black_level must be a scalar or 4 per-site values (row-major 2x2) "
                     f">= 0, got {black_level!r}")
  if np.any(black >= white):
    raise ValueError(f"black_level {black.tolist()} must be below white_level {white:g}")

  neutral = np.asarray(as_shot_neutral, np.float64).reshape(-1)
  if neutral.size != 3 or not np.all(np.isfinite(neutral)) or np.any(neutral <= 0):
    raise ValueError(f"as_shot_neutral must be 3 positive values (R, G, B), got "
                     f"{as_shot_neutral!r}")
  cm = np.asarray(color_matrix, np.float64)
  if cm.shape != (3, 3) or not np.all(np.isfinite(cm)):
    raise ValueError(f"color_matrix must be a finite 3x3 XYZ->camera matrix, got shape "
                     f"{cm.shape}")
  if abs(np.linalg.det(cm)) < 1e-6:  # readers invert it; LibRaw silently ignores it
    raise ValueError(f"color_matrix is singular (det {np.linalg.det(cm):.3g})")
  if int(orientation) != orientation or not 1 <= int(orientation) <= 8:
    raise ValueError(f"orientation must be an EXIF code 1..8, got {orientation!r}")
  make, model = _ascii("make", make), _ascii("model", model)
  unique = _ascii("unique_model", unique_model or f"{make} {model}")

  # (code, dtype, count, value, writeonce); tifffile writes them into IFD0 in code order.
  tags = [
      (_T["Make"], "s", 0, make, True),
      (_T["Model"], "s", 0, model, True),
      (_T["Orientation"], "H", 1, int(orientation), True),
      (_T["CFARepeatPatternDim"], "H", 2, (2, 2), True),
      (_T["CFAPattern"], "B", 4, tuple(_CFA_CODE[c] for c in pattern), True),
      (_T["DNGVersion"], "B", 4, (1, 4, 0, 0), True),
      (_T["DNGBackwardVersion"], "B", 4, (1, 1, 0, 0), True),
      (_T["UniqueCameraModel"], "s", 0, unique, True),
      (_T["CFAPlaneColor"], "B", 3, (0, 1, 2), True),
      (_T["CFALayout"], "H", 1, 1, True),
      (_T["WhiteLevel"], "I", 1, int(white), True),
      (_T["ColorMatrix1"], "2i", 9, _rationals(cm, signed=True), True),
      (_T["AsShotNeutral"], "2I", 3, _rationals(neutral, signed=False), True),
      (_T["CalibrationIlluminant1"], "H", 1, _D65, True),
  ]
  if black.size == 4:  # per CFA site: the 2x2 repeat makes it exact per channel
    tags.append((_T["BlackLevelRepeatDim"], "H", 2, (2, 2), True))
  if np.all(black == np.round(black)):
    tags.append((_T["BlackLevel"], "I", black.size, tuple(int(b) for b in black), True))
  else:
    tags.append((_T["BlackLevel"], "2I", black.size, _rationals(black, signed=False), True))
  if linearization is not None:
    lut = np.asarray(linearization).reshape(-1)
    if lut.size < 2 or lut.size > 65536 or lut.min() < 0 or lut.max() > 65535:
      raise ValueError("linearization must be a 1-D table of 2..65536 uint16 values")
    tags.append((_T["LinearizationTable"], "H", lut.size, tuple(int(x) for x in lut), True))
  return tags


def write_dng(path, mosaic, pattern, black_level, white_level, as_shot_neutral,
              color_matrix, orientation=1, make="jisp", model="jisp", unique_model=None,
              *, linearization=None) -> Path:
  """Write an uncompressed Bayer DNG atomically (temp file in the same folder + rename,
  mode 0644).

  mosaic: (H, W) raw digital values, uint16 or losslessly castable, H and W even, in
    sensor orientation; `orientation` (EXIF 1..8) tells readers how to show it.
  pattern: "RGGB" / "BGGR" / "GRBG" / "GBRG" of the top-left 2x2 tile.
  black_level: scalar or 4 per-site values (row-major over the 2x2 tile).
  as_shot_neutral: camera RGB of a neutral (= 1 / white-balance gains); readers report
    white balance 1/neutral.
  color_matrix: 3x3 XYZ -> camera (DNG ColorMatrix1), calibrated for D65.
  linearization: optional LinearizationTable; the stored values then index it.
  """
  path = Path(path)
  m = _as_uint16_mosaic(mosaic)
  tags = dng_tags(m.shape, pattern, black_level, white_level, as_shot_neutral,
                  color_matrix, orientation, make, model, unique_model, linearization)
  if linearization is not None and int(m.max()) >= np.asarray(linearization).size:
    raise ValueError(f"mosaic value {int(m.max())} indexes past the "
                     f"{np.asarray(linearization).size}-entry linearization table")
  import tifffile
  buf = io.BytesIO()
  tifffile.imwrite(buf, m, photometric=32803, planarconfig="contig",
                   rowsperstrip=m.shape[0], extratags=tags, metadata=None,
                   software=False)
  if not path.parent.is_dir():
    raise FileNotFoundError(f"{path}: parent folder does not exist")
  return atomic_write_bytes(path, buf.getvalue())


def neutral_from_wb(wb) -> np.ndarray:
  """White-balance gains (R, G, B) -> AsShotNeutral, normalised so its green is 1."""
  g = np.asarray(wb, np.float64).reshape(-1)[:3]
  if g.size != 3 or np.any(g <= 0) or not np.all(np.isfinite(g)):
    raise ValueError(f"white-balance gains must be 3 positive values, got {wb!r}")
  n = 1.0 / g
  return n / n[1]
