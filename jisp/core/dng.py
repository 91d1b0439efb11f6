"""Bayer mosaics out: uncompressed DNG files that LibRaw, dcraw, RawTherapee and exiftool
read back exactly, carrying the source photo's metadata and a preview.

Layout. Without a preview the raw image is IFD0 (the minimal DNG). With one, the file is
laid out as DNG converters do: IFD0 is an 8-bit sRGB preview (NewSubFileType 1) holding
the camera-wide tags (make/model, colour matrices, white balance, profile names), the raw
CFA image is its SubIFD (NewSubFileType 0) holding the raw-only tags (CFA layout, levels,
linearization), and IFD0 points to an EXIF IFD and a GPS IFD with the photo's metadata.

Writer. tifffile writes the image IFDs and the SubIFD (one uncompressed strip each, typed
tags) rather than pidng, which stores the image as one tile of arbitrary size, fixes
BlackLevel/WhiteLevel to SHORT and prints tag errors instead of raising. tifffile has no
writer for IFDs without pixels and refuses to write the EXIF/GPS pointer tags, so the EXIF
and GPS IFDs are packed here (`_pack_ifd`, the TIFF 6 entry layout) and appended, and
IFD0 is re-emitted after them with the two pointers added (its values stay in place).
tifffile types the SubIFDs pointer as IFD (13), which exiftool flags as non-standard; it is
stored as LONG, which every TIFF reader takes.

Camera names. LibRaw and dcraw take colour from the embedded ColorMatrix whatever
Make/Model say, but RawTherapee looks Make + Model up in its camconst.json and profile
folder and, for a real camera, crops the image to that sensor's borders, reads black from
its masked areas and applies its colour profile -- all wrong for a reconstructed mosaic.
`camera_names` therefore keeps the source's make and marks the model as jisp's
("Canon EOS R5 (jisp)"), which no table matches; UniqueCameraModel names the colour profile
the mosaic is in ("jisp Canon EOS 550D"), so no reader applies a real camera's profile.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from jisp.core import exif as exif_lib
from jisp.core.camera import BAYER_PATTERNS
from jisp.core.fileio import atomic_write_bytes

_CFA_CODE = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes
_D65 = 21                              # EXIF LightSource code of CalibrationIlluminant
_DEN = 1_000_000                       # rational denominator: 1e-6 resolution
# LibRaw and dcraw take a raw image with a side under 22 pixels for no raw at all.
MIN_SIDE = 22
PREVIEW_SIZE = 256                     # long side of the IFD0 preview (DNG spec advice)
_SRGB_PREVIEW = 2                      # PreviewColorSpace: sRGB
# EXIF LightSource codes valid as a DNG CalibrationIlluminant (EXIF 2.32; 255 = other).
_LIGHT_SOURCES = frozenset(range(0, 25)) | {255}

# DNG tag codes.
_T = dict(NewSubFileType=254, Make=271, Model=272, Orientation=274, Software=305,
          SubIFDs=330, CFARepeatPatternDim=33421, CFAPattern=33422, ExifIFD=34665,
          GPSIFD=34853, DNGVersion=50706, DNGBackwardVersion=50707,
          UniqueCameraModel=50708, CFAPlaneColor=50710, CFALayout=50711,
          LinearizationTable=50712, BlackLevelRepeatDim=50713, BlackLevel=50714,
          WhiteLevel=50717, ColorMatrix1=50721, ColorMatrix2=50722, AsShotNeutral=50728,
          BaselineExposure=50730, CalibrationIlluminant1=50778,
          CalibrationIlluminant2=50779, OriginalRawFileName=50827, ProfileName=50936,
          ForwardMatrix1=50964, ForwardMatrix2=50965, PreviewColorSpace=50970)
# Tags of the raw IFD itself; everything else describes the camera and lives in IFD0.
_RAW_ONLY = frozenset(_T[k] for k in (
    "CFARepeatPatternDim", "CFAPattern", "CFAPlaneColor", "CFALayout",
    "LinearizationTable", "BlackLevelRepeatDim", "BlackLevel", "WhiteLevel"))


def _rationals(values, signed: bool):
  """Flat (num, den, num, den, ...) for TIFF (S)RATIONAL tags."""
  out = []
  for v in np.asarray(values, np.float64).reshape(-1):
    out += [int(round(v * _DEN)), _DEN]
  lim = 2**31 - 1 if signed else 2**32 - 1
  if any(abs(x) > lim for x in out[0::2]):
    raise ValueError(f"value out of range for a DNG rational: {values!r}")
  return tuple(out)


def even_crop(a) -> np.ndarray:
  """The top-left even-sized part of an (H, W, ...) array: DNG mosaics are whole 2x2 CFA
  tiles, and cropping the last odd row/column keeps the CFA phase."""
  a = np.asarray(a)
  return a[:a.shape[0] // 2 * 2, :a.shape[1] // 2 * 2]


def _as_uint16_mosaic(mosaic) -> np.ndarray:
  m = np.asarray(mosaic)
  if m.ndim != 2:
    raise ValueError(f"mosaic must be 2-D (H, W), got shape {m.shape}")
  h, w = m.shape
  if h < 2 or w < 2 or h % 2 or w % 2:
    raise ValueError(f"mosaic dims must be even and >= 2 (whole 2x2 CFA tiles), got {h}x{w}")
  if h < MIN_SIDE or w < MIN_SIDE:
    raise ValueError(f"mosaic {w}x{h} is too small for a DNG: RAW readers (LibRaw, dcraw) "
                     f"open none with a side under {MIN_SIDE} pixels")
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


def _text_tag(code: int, name: str, value) -> tuple:
  """An 'ASCII or BYTE' DNG string (ProfileName, OriginalRawFileName): ASCII when it is,
  else UTF-8 bytes as the DNG spec allows for these tags."""
  s = str(value)
  if not s or "\x00" in s:
    raise ValueError(f"{name} must be a non-empty string without NUL, got {value!r}")
  if s.isascii():
    return (code, "s", 0, s, True)
  b = s.encode("utf-8") + b"\0"
  return (code, "B", len(b), b, True)


def _matrix(name: str, m, invertible: bool) -> np.ndarray:
  a = np.asarray(m, np.float64)
  if a.shape != (3, 3) or not np.all(np.isfinite(a)):
    raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {a.shape}")
  if invertible and abs(np.linalg.det(a)) < 1e-6:  # readers invert it; LibRaw ignores it
    raise ValueError(f"{name} is singular (det {np.linalg.det(a):.3g})")
  return a


def _illuminant(name: str, code) -> int:
  if not isinstance(code, (int, np.integer)) or int(code) not in _LIGHT_SOURCES:
    raise ValueError(f"{name} must be an EXIF LightSource code (0..24 or 255, 21 = D65), "
                     f"got {code!r}")
  return int(code)


def camera_names(metadata: Optional[exif_lib.PhotoMetadata] = None,
                 profile_camera: str = "") -> dict:
  """{make, model, unique_model} for write_dng (see the module doc for why).

  make: the source photo's make, else "jisp". model: the source's model + " (jisp)", else
  the profile camera, else "jisp". unique_model: "jisp " + the profile camera (the colour
  profile the mosaic is in), else make + model. Non-ASCII letters become '?', since
  Make/Model are 7-bit ASCII in TIFF.
  """
  def clean(s):
    return (s or "").encode("ascii", "replace").decode().replace("\x00", "").strip()
  src_make = clean(metadata.make) if metadata is not None else ""
  src_model = clean(metadata.model) if metadata is not None else ""
  prof = clean(profile_camera)
  make = src_make or "jisp"
  model = f"{src_model} (jisp)" if src_model else (prof or "jisp")
  unique = f"jisp {prof}" if prof else f"{make} {model}"
  return {"make": make, "model": model, "unique_model": unique}


def _split_tags(shape, pattern, black_level, white_level, as_shot_neutral, color_matrix,
                orientation, make, model, unique_model, linearization, *,
                color_matrix2=None, illuminant1=_D65, illuminant2=None,
                forward_matrix1=None, forward_matrix2=None, baseline_exposure=None,
                profile_name=None, original_name=None) -> tuple[list, list]:
  """Validated tifffile `extratags` as (camera-wide IFD0 tags, raw-IFD tags)."""
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

  # (code, dtype, count, value, writeonce); tifffile writes each IFD's tags in code order.
  ifd0 = [
      (_T["Make"], "s", 0, make, True),
      (_T["Model"], "s", 0, model, True),
      (_T["Orientation"], "H", 1, int(orientation), True),
      (_T["DNGVersion"], "B", 4, (1, 4, 0, 0), True),
      (_T["DNGBackwardVersion"], "B", 4, (1, 1, 0, 0), True),
      (_T["UniqueCameraModel"], "s", 0, unique, True),
      (_T["ColorMatrix1"], "2i", 9, _rationals(cm, signed=True), True),
      (_T["AsShotNeutral"], "2I", 3, _rationals(neutral, signed=False), True),
      (_T["CalibrationIlluminant1"], "H", 1, _illuminant("illuminant1", illuminant1), True),
  ]
  if color_matrix2 is not None:
    if illuminant2 is None:
      raise ValueError("color_matrix2 needs illuminant2 (its CalibrationIlluminant2)")
    ifd0 += [(_T["ColorMatrix2"], "2i", 9,
              _rationals(_matrix("color_matrix2", color_matrix2, True), signed=True), True),
             (_T["CalibrationIlluminant2"], "H", 1,
              _illuminant("illuminant2", illuminant2), True)]
  elif illuminant2 is not None or forward_matrix2 is not None:
    raise ValueError("illuminant2 / forward_matrix2 need color_matrix2")
  for key, name, fm in (("ForwardMatrix1", "forward_matrix1", forward_matrix1),
                        ("ForwardMatrix2", "forward_matrix2", forward_matrix2)):
    if fm is not None:
      ifd0.append((_T[key], "2i", 9, _rationals(_matrix(name, fm, False), signed=True), True))
  if baseline_exposure is not None:
    ev = float(baseline_exposure)
    if not np.isfinite(ev) or abs(ev) > 100:
      raise ValueError(f"baseline_exposure must be a finite EV value, got {baseline_exposure!r}")
    ifd0.append((_T["BaselineExposure"], "2i", 1, _rationals(ev, signed=True), True))
  if profile_name is not None:
    ifd0.append(_text_tag(_T["ProfileName"], "profile_name", profile_name))
  if original_name is not None:
    ifd0.append(_text_tag(_T["OriginalRawFileName"], "original_name", original_name))

  raw = [
      (_T["CFARepeatPatternDim"], "H", 2, (2, 2), True),
      (_T["CFAPattern"], "B", 4, tuple(_CFA_CODE[c] for c in pattern), True),
      (_T["CFAPlaneColor"], "B", 3, (0, 1, 2), True),
      (_T["CFALayout"], "H", 1, 1, True),
      (_T["WhiteLevel"], "I", 1, int(white), True),
  ]
  if black.size == 4:  # per CFA site: the 2x2 repeat makes it exact per channel
    raw.append((_T["BlackLevelRepeatDim"], "H", 2, (2, 2), True))
  if np.all(black == np.round(black)):
    raw.append((_T["BlackLevel"], "I", black.size, tuple(int(b) for b in black), True))
  else:
    raw.append((_T["BlackLevel"], "2I", black.size, _rationals(black, signed=False), True))
  if linearization is not None:
    lut = np.asarray(linearization).reshape(-1)
    if lut.size < 2 or lut.size > 65536 or lut.min() < 0 or lut.max() > 65535:
      raise ValueError("linearization must be a 1-D table of 2..65536 uint16 values")
    raw.append((_T["LinearizationTable"], "H", lut.size, tuple(int(x) for x in lut), True))
  return ifd0, raw


def dng_tags(shape, pattern, black_level, white_level, as_shot_neutral, color_matrix,
             orientation=1, make="jisp", model="jisp", unique_model=None,
             linearization=None) -> list:
  """Validated tifffile `extratags` of a single-IFD Bayer DNG (everything but pixels)."""
  ifd0, raw = _split_tags(shape, pattern, black_level, white_level, as_shot_neutral,
                          color_matrix, orientation, make, model, unique_model, linearization)
  return sorted(ifd0 + raw, key=lambda t: t[0])


def make_preview(rgb, size: int = PREVIEW_SIZE) -> np.ndarray:
  """uint8 (h, w, 3) sRGB preview of an (H, W, 3) image (float in [0, 1], uint8 or
  uint16), its long side at most `size` (never enlarged), resampled with Pillow's Lanczos
  filter."""
  from PIL import Image
  a = np.asarray(rgb)
  if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
    raise ValueError(f"preview must be an (H, W, 3) RGB image, got shape {a.shape}")
  if int(size) != size or size < 1:
    raise ValueError(f"preview size must be a positive integer, got {size!r}")
  if a.dtype != np.uint8:
    if a.dtype != np.uint16 and a.dtype.kind != "f":
      raise ValueError(f"preview must be float in [0, 1], uint8 or uint16, got {a.dtype}")
    full_scale = 65535.0 if a.dtype == np.uint16 else 1.0
    a = a.astype(np.float32)  # a copy: the caller's array is not touched
    a /= full_scale
    np.fmax(a, 0.0, out=a)    # fmax/fmin map NaN to the bound, in place
    np.fmin(a, 1.0, out=a)
    a *= 255.0
    a = np.rint(a, out=a).astype(np.uint8)
  h, w = a.shape[:2]
  s = min(1.0, size / max(h, w))
  th, tw = max(1, round(h * s)), max(1, round(w * s))
  if (th, tw) == (h, w):
    return np.ascontiguousarray(a)
  im = Image.fromarray(np.ascontiguousarray(a)).resize((tw, th), Image.Resampling.LANCZOS)
  return np.asarray(im)


# --------------------------------------------------------------------------- TIFF layer

_PACK = {exif_lib.BYTE: "B", exif_lib.SHORT: "H", exif_lib.LONG: "I",
         exif_lib.RATIONAL: "I", exif_lib.SRATIONAL: "i"}


def _pack_ifd(entries, offset: int) -> bytes:
  """A little-endian IFD without image data, to be placed at file position `offset` (even):
  entry count, 12-byte entries in tag order, next-IFD 0, then the values over 4 bytes.

  entries: (tag, type, value); value is bytes for BYTE / ASCII / UNDEFINED, a tuple of
  ints for SHORT / LONG, a tuple of (num, den) pairs for (S)RATIONAL.
  """
  entries = sorted(entries, key=lambda e: e[0])
  if len({e[0] for e in entries}) != len(entries):
    raise ValueError("duplicate tag in an IFD")
  table = struct.pack("<H", len(entries))
  data = b""
  data_at = offset + 2 + 12 * len(entries) + 4
  for tag, typ, value in entries:
    if typ in (exif_lib.BYTE, exif_lib.ASCII, exif_lib.UNDEFINED):
      payload, count = bytes(value), len(value)
    elif typ in (exif_lib.RATIONAL, exif_lib.SRATIONAL):
      flat = [int(x) for pair in value for x in pair]
      payload, count = struct.pack(f"<{len(flat)}{_PACK[typ]}", *flat), len(value)
    else:
      payload, count = struct.pack(f"<{len(value)}{_PACK[typ]}", *value), len(value)
    if len(payload) <= 4:
      field = payload.ljust(4, b"\0")
    else:
      field = struct.pack("<I", data_at + len(data))
      data += payload + b"\0" * (len(payload) % 2)  # values start on a word boundary
    table += struct.pack("<HHI", tag, typ, count) + field
  return table + struct.pack("<I", 0) + data


def _relink_ifd0(buf: bytearray, pointers: dict) -> None:
  """Store IFD0's SubIFDs pointer as LONG; with `pointers` {tag: offset}, re-emit IFD0 at
  the end of `buf` with those entries added (tifffile will not write EXIF/GPS pointers,
  as it did not write what they point to) and point the header at it. Entry values stay
  where tifffile put them."""
  old = struct.unpack_from("<I", buf, 4)[0]
  n = struct.unpack_from("<H", buf, old)[0]
  for i in range(n):
    pos = old + 2 + 12 * i
    if struct.unpack_from("<HH", buf, pos) == (_T["SubIFDs"], 13):
      struct.pack_into("<H", buf, pos + 2, exif_lib.LONG)
  if not pointers:
    return
  entries = [bytes(buf[old + 2 + 12 * i: old + 14 + 12 * i]) for i in range(n)]
  next_ifd = struct.unpack_from("<I", buf, old + 2 + 12 * n)[0]
  have = {struct.unpack_from("<H", e)[0] for e in entries}
  for tag, offset in pointers.items():
    if tag in have:
      raise RuntimeError(f"IFD0 already has tag {tag}")
    entries.append(struct.pack("<HHII", tag, exif_lib.LONG, 1, offset))
  entries.sort(key=lambda e: struct.unpack_from("<H", e)[0])
  buf += b"\0" * (len(buf) % 2)
  struct.pack_into("<I", buf, 4, len(buf))
  buf += struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", next_ifd)


def _metadata_ifds(metadata, ifd0: list) -> dict:
  """{pointer tag: entries} of the EXIF and GPS IFDs; adds the record's IFD0 tags to
  `ifd0`."""
  ifds = {exif_lib.EXIF_IFD: exif_lib.exif_entries(metadata)}
  gps = exif_lib.gps_entries(metadata)
  if gps is not None:
    ifds[exif_lib.GPS_IFD] = gps
  for tag, typ, value in exif_lib.ifd0_entries(metadata):
    ifd0.append((tag, "s", 0, value, True))
  return ifds


def write_dng(path, mosaic, pattern, black_level, white_level, as_shot_neutral,
              color_matrix, orientation=1, make=None, model=None, unique_model=None, *,
              linearization=None, metadata: Optional[exif_lib.PhotoMetadata] = None,
              profile_camera: str = "", preview=None, preview_size: int = PREVIEW_SIZE,
              original_name: Optional[str] = None, software: Optional[str] = None,
              profile_name: Optional[str] = None, baseline_exposure: Optional[float] = None,
              illuminant1: int = _D65, color_matrix2=None, illuminant2: Optional[int] = None,
              forward_matrix1=None, forward_matrix2=None) -> Path:
  """Write an uncompressed Bayer DNG atomically (temp file in the same folder + rename,
  mode 0644); ValueError (one line) for anything a reader could not take.

  mosaic: (H, W) raw digital values, uint16 or losslessly castable, H and W even and at
    least MIN_SIDE, in stored orientation; `orientation` (EXIF 1..8) tells readers how to
    show it (use `even_crop` on odd-sized images).
  pattern: "RGGB" / "BGGR" / "GRBG" / "GBRG" of the top-left 2x2 tile.
  black_level: scalar or 4 per-site values (row-major over the 2x2 tile).
  as_shot_neutral: camera RGB of a neutral (= 1 / white-balance gains); readers report
    white balance 1/neutral.
  color_matrix: 3x3 XYZ -> camera (ColorMatrix1) under `illuminant1` (EXIF LightSource,
    21 = D65); color_matrix2 / illuminant2, forward_matrix1/2 (camera -> XYZ D50) and
    baseline_exposure (EV) are written when given.
  linearization: optional LinearizationTable; the stored values then index it.
  make / model / unique_model: IFD0 names; None takes `camera_names(metadata,
    profile_camera)`.
  metadata: the source photo's record (jisp.core.exif): EXIF IFD, GPS IFD, DateTime,
    Artist, Copyright, ImageDescription; its `source` is the default original_name.
  preview: (H', W', 3) sRGB image (float [0, 1] or uint8) in the mosaic's stored
    orientation; stored as the IFD0 preview, at most `preview_size` on its long side.
  original_name: OriginalRawFileName. software: Software (default "jisp <version>").
  profile_name: ProfileName, the embedded colour profile's name (default: the
    UniqueCameraModel).
  """
  from jisp import __version__
  path = Path(path)
  m = _as_uint16_mosaic(mosaic)
  if make is None or model is None or unique_model is None:
    names = camera_names(metadata, profile_camera)
    make = names["make"] if make is None else make
    model = names["model"] if model is None else model
    unique_model = names["unique_model"] if unique_model is None else unique_model
  software = _ascii("software", software or f"jisp {__version__}")
  if original_name is None and metadata is not None and metadata.source:
    original_name = metadata.source
  ifd0, raw = _split_tags(
      m.shape, pattern, black_level, white_level, as_shot_neutral, color_matrix,
      orientation, make, model, unique_model, linearization, color_matrix2=color_matrix2,
      illuminant1=illuminant1, illuminant2=illuminant2, forward_matrix1=forward_matrix1,
      forward_matrix2=forward_matrix2, baseline_exposure=baseline_exposure,
      profile_name=profile_name or unique_model or f"{make} {model}",
      original_name=original_name)
  if linearization is not None and int(m.max()) >= np.asarray(linearization).size:
    raise ValueError(f"mosaic value {int(m.max())} indexes past the "
                     f"{np.asarray(linearization).size}-entry linearization table")
  prev = None if preview is None else make_preview(preview, preview_size)
  ifds = {} if metadata is None else _metadata_ifds(metadata, ifd0)
  if not path.parent.is_dir():
    raise FileNotFoundError(f"{path}: parent folder does not exist")

  import tifffile
  buf = io.BytesIO()
  raw_kw = dict(photometric=32803, planarconfig="contig", rowsperstrip=m.shape[0],
                metadata=None)
  with tifffile.TiffWriter(buf, byteorder="<", bigtiff=False) as tw:
    if prev is None:
      tw.write(m, extratags=sorted(ifd0 + raw, key=lambda t: t[0]), software=software,
               **raw_kw)
    else:
      ifd0.append((_T["PreviewColorSpace"], "I", 1, _SRGB_PREVIEW, True))
      tw.write(prev, photometric="rgb", planarconfig="contig", subfiletype=1, subifds=1,
               rowsperstrip=prev.shape[0], extratags=sorted(ifd0, key=lambda t: t[0]),
               metadata=None, software=software)
      tw.write(m, subfiletype=0, extratags=raw, software=False, **raw_kw)
  out = bytearray(buf.getvalue())
  pointers = {}
  for tag, entries in ifds.items():
    out += b"\0" * (len(out) % 2)
    pointers[tag] = len(out)
    out += _pack_ifd(entries, len(out))
  _relink_ifd0(out, pointers)
  return atomic_write_bytes(path, bytes(out))


def neutral_from_wb(wb) -> np.ndarray:
  """White-balance gains (R, G, B) -> AsShotNeutral, normalised so its green is 1."""
  g = np.asarray(wb, np.float64).reshape(-1)[:3]
  if g.size != 3 or np.any(g <= 0) or not np.all(np.isfinite(g)):
    raise ValueError(f"white-balance gains must be 3 positive values, got {wb!r}")
  n = 1.0 / g
  return n / n[1]
