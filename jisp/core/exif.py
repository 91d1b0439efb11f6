"""A photo's own metadata: read with Pillow's EXIF support, written back as DNG tags.

`read_photo_metadata(path)` gives a `PhotoMetadata` for a JPEG, TIFF, PNG (eXIf chunk),
WebP -- any file Pillow reads EXIF from. Metadata is an extra, never a reason to refuse an
image: a field Pillow cannot give, or gives in a form the EXIF spec does not allow, is left
out and named in `problems`; a file without EXIF gives an empty record.

`ifd0_entries`, `exif_entries` and `gps_entries` turn a record into (tag, TIFF type, value)
entries with the types of the EXIF 2.32 spec, for jisp.core.dng. Rationals stay exact
fractions end to end, so a value read back is the value that was read.

Pillow is imported when used, so this module imports with the standard library alone.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from fractions import Fraction
from pathlib import Path
from typing import Optional

from jisp.core.errors import InputError

# TIFF field types.
BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 1, 2, 3, 4, 5, 7, 10
EXIF_IFD, GPS_IFD = 34665, 34853  # IFD0 pointer tags
EXIF_VERSION = b"0232"            # OffsetTime* (2.31) and the types below are 2.32's

_DATETIME = re.compile(r"^\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}$")
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")
_SUBSEC = re.compile(r"^\d{1,9}$")


@dataclasses.dataclass(frozen=True)
class GPS:
  """Position as EXIF stores it: degrees, minutes, seconds as exact fractions + refs."""
  latitude: tuple
  latitude_ref: str          # "N" or "S"
  longitude: tuple
  longitude_ref: str         # "E" or "W"
  altitude: Optional[Fraction] = None  # metres
  altitude_ref: int = 0      # 0: above sea level, 1: below

  @staticmethod
  def _deg(dms) -> float:
    d, m, s = (float(x) for x in dms)
    return d + m / 60 + s / 3600

  @property
  def lat(self) -> float:
    """Signed decimal degrees (north positive)."""
    return self._deg(self.latitude) * (-1 if self.latitude_ref == "S" else 1)

  @property
  def lon(self) -> float:
    """Signed decimal degrees (east positive)."""
    return self._deg(self.longitude) * (-1 if self.longitude_ref == "W" else 1)

  @property
  def alt(self) -> Optional[float]:
    """Signed metres (below sea level negative), None when not recorded."""
    if self.altitude is None:
      return None
    return float(self.altitude) * (-1 if self.altitude_ref == 1 else 1)


@dataclasses.dataclass(frozen=True)
class PhotoMetadata:
  """What a photo says about itself. None: not recorded (or not usable, see `problems`).

  Date/times are EXIF text "YYYY:MM:DD HH:MM:SS" with the offset ("+02:00") and
  sub-second digits kept as separate text, as EXIF stores them; `captured()` combines them.
  exposure_time (s), f_number, focal_length (mm), exposure_bias (EV) are exact Fractions.
  orientation is the source's EXIF code (1 when absent); a DNG of pixels read upright
  (jisp.core.images.read_image) has orientation 1, whatever the source had.
  """
  source: str = ""                     # the file's name
  make: Optional[str] = None
  model: Optional[str] = None
  orientation: int = 1
  software: Optional[str] = None       # the source's, never written as the DNG's Software
  datetime: Optional[str] = None       # IFD0 DateTime (last change)
  datetime_original: Optional[str] = None
  datetime_digitized: Optional[str] = None
  offset_time: Optional[str] = None
  offset_time_original: Optional[str] = None
  offset_time_digitized: Optional[str] = None
  subsec_time: Optional[str] = None
  subsec_time_original: Optional[str] = None
  subsec_time_digitized: Optional[str] = None
  exposure_time: Optional[Fraction] = None
  f_number: Optional[Fraction] = None
  iso: Optional[int] = None
  exposure_program: Optional[int] = None
  exposure_bias: Optional[Fraction] = None
  metering_mode: Optional[int] = None
  flash: Optional[int] = None
  focal_length: Optional[Fraction] = None
  exposure_mode: Optional[int] = None
  white_balance: Optional[int] = None
  focal_length_35mm: Optional[int] = None
  camera_owner: Optional[str] = None
  body_serial: Optional[str] = None
  lens_specification: Optional[tuple] = None  # 4 Fractions, None where unknown (0/0)
  lens_make: Optional[str] = None
  lens_model: Optional[str] = None
  lens_serial: Optional[str] = None
  artist: Optional[str] = None
  copyright: Optional[str] = None
  description: Optional[str] = None
  gps: Optional[GPS] = None
  problems: tuple = ()                 # "Tag: why it was left out", one per dropped field

  def captured(self) -> Optional[dt.datetime]:
    """Capture time (DateTimeOriginal + sub-seconds), timezone-aware when the offset is
    recorded, naive otherwise; None when the photo has no capture time."""
    if self.datetime_original is None:
      return None
    t = dt.datetime.strptime(self.datetime_original, "%Y:%m:%d %H:%M:%S")
    if self.subsec_time_original:
      t = t.replace(microsecond=int(self.subsec_time_original[:6].ljust(6, "0")))
    if self.offset_time_original:
      sign = -1 if self.offset_time_original[0] == "-" else 1
      hh, mm = int(self.offset_time_original[1:3]), int(self.offset_time_original[4:6])
      t = t.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=hh, minutes=mm)))
    return t

  @property
  def camera(self) -> str:
    """"Make Model" as photo tools show it (the make once), "" when unknown."""
    make, model = self.make or "", self.model or ""
    if make and model.lower().startswith(make.split()[0].lower()):
      return model
    return " ".join(x for x in (make, model) if x)


# (field, IFD (0 = IFD0), tag, kind). Types on writing follow from the kind.
_FIELDS = (
    ("make", 0, 271, "text"), ("model", 0, 272, "text"), ("software", 0, 305, "text"),
    ("datetime", 0, 306, "datetime"), ("artist", 0, 315, "text"),
    ("copyright", 0, 33432, "copyright"), ("description", 0, 270, "text"),
    ("exposure_time", EXIF_IFD, 33434, "positive"), ("f_number", EXIF_IFD, 33437, "positive"),
    ("exposure_program", EXIF_IFD, 34850, "short"), ("iso", EXIF_IFD, 34855, "iso"),
    ("datetime_original", EXIF_IFD, 36867, "datetime"),
    ("datetime_digitized", EXIF_IFD, 36868, "datetime"),
    ("offset_time", EXIF_IFD, 36880, "offset"),
    ("offset_time_original", EXIF_IFD, 36881, "offset"),
    ("offset_time_digitized", EXIF_IFD, 36882, "offset"),
    ("exposure_bias", EXIF_IFD, 37380, "signed"), ("metering_mode", EXIF_IFD, 37383, "short"),
    ("flash", EXIF_IFD, 37385, "short"), ("focal_length", EXIF_IFD, 37386, "positive"),
    ("subsec_time", EXIF_IFD, 37520, "subsec"),
    ("subsec_time_original", EXIF_IFD, 37521, "subsec"),
    ("subsec_time_digitized", EXIF_IFD, 37522, "subsec"),
    ("exposure_mode", EXIF_IFD, 41986, "short"), ("white_balance", EXIF_IFD, 41987, "short"),
    ("focal_length_35mm", EXIF_IFD, 41989, "short"),
    ("camera_owner", EXIF_IFD, 42032, "text"), ("body_serial", EXIF_IFD, 42033, "text"),
    ("lens_specification", EXIF_IFD, 42034, "lensspec"),
    ("lens_make", EXIF_IFD, 42035, "text"), ("lens_model", EXIF_IFD, 42036, "text"),
    ("lens_serial", EXIF_IFD, 42037, "text"),
)
_TAG_NAME = {tag: "".join(w.capitalize() for w in f.split("_")) for f, _, tag, _ in _FIELDS}


# --------------------------------------------------------------------------- reading

def _text(v, keep_nul: bool = False) -> str:
  """EXIF ASCII as Pillow hands it (latin-1 decoded) -> str, UTF-8 restored where it was."""
  if isinstance(v, bytes):
    raw = v
  elif isinstance(v, str):
    raw = v.encode("latin-1", "replace")
  else:
    raise ValueError(f"not text ({type(v).__name__})")
  try:
    s = raw.decode("utf-8")
  except UnicodeDecodeError:
    s = raw.decode("latin-1")
  if keep_nul:  # Copyright: "photographer\0editor"
    s = "\0".join(p.strip() for p in s.split("\0") if p.strip())
  else:
    s = s.split("\0", 1)[0].strip()
  if not s:
    raise ValueError("empty")
  return s


def _fraction(v) -> Fraction:
  num, den = getattr(v, "numerator", None), getattr(v, "denominator", None)
  if isinstance(v, tuple) and len(v) == 2:
    num, den = v
  if isinstance(v, int):
    num, den = v, 1
  if not isinstance(num, int) or not isinstance(den, int):
    raise ValueError(f"not a rational ({v!r})")
  if den == 0:
    raise ValueError("zero denominator")
  return Fraction(num, den)


def _first_int(v) -> int:
  if isinstance(v, (tuple, list)):
    if not v:
      raise ValueError("empty")
    v = v[0]
  if isinstance(v, bytes) and len(v) == 1:
    v = v[0]
  if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
    raise ValueError(f"not a SHORT ({v!r})")
  return v


def _convert(kind: str, v):
  if kind == "text":
    return _text(v)
  if kind == "copyright":
    return _text(v, keep_nul=True)
  if kind == "datetime":
    s = _text(v)
    if not _DATETIME.match(s) or s.startswith("0000"):
      raise ValueError(f"not an EXIF date/time ({s!r})")
    dt.datetime.strptime(s, "%Y:%m:%d %H:%M:%S")  # 2023:02:30 is no date
    return s
  if kind == "offset":
    s = _text(v)
    if not _OFFSET.match(s):
      raise ValueError(f"not a UTC offset ({s!r})")
    return s
  if kind == "subsec":
    s = _text(v)
    if not _SUBSEC.match(s):
      raise ValueError(f"not sub-second digits ({s!r})")
    return s
  if kind == "positive":
    f = _fraction(v)
    if f <= 0:
      raise ValueError(f"must be positive ({f})")
    return f
  if kind == "signed":
    return _fraction(v)
  if kind == "short":
    return _first_int(v)
  if kind == "iso":
    iso = _first_int(v)
    if iso <= 0:
      raise ValueError("zero")
    return iso
  if kind == "lensspec":
    if not isinstance(v, (tuple, list)) or len(v) != 4:
      raise ValueError(f"expected 4 rationals ({v!r})")
    out = []
    for x in v:  # 0/0 marks an unknown entry (EXIF 2.32)
      out.append(None if getattr(x, "denominator", 1) == 0 else _fraction(x))
    return tuple(out)
  raise AssertionError(kind)


_GPS_NAME = {1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude"}


def _gps(g: dict, problems: list) -> Optional[GPS]:
  if not g:
    return None
  try:
    refs = {k: _text(g[k]).upper()[:1] for k in (1, 3)}
    if refs[1] not in ("N", "S") or refs[3] not in ("E", "W"):
      raise ValueError(f"bad reference {refs[1]!r}/{refs[3]!r}")
    dms = {}
    for k, limit in ((2, 90), (4, 180)):
      v = tuple(_fraction(x) for x in g[k])
      if len(v) != 3 or any(x < 0 for x in v) or v[1] >= 60 or v[2] >= 60:
        raise ValueError(f"not degrees/minutes/seconds ({g[k]!r})")
      if v[0] + v[1] / 60 + v[2] / 3600 > limit:
        raise ValueError(f"beyond {limit} degrees")
      dms[k] = v
  except KeyError as e:
    problems.append(f"GPS: no {_GPS_NAME[e.args[0]]}")
    return None
  except (ValueError, TypeError) as e:
    problems.append(f"GPS: {e}")
    return None
  alt, alt_ref = None, 0
  if 6 in g:
    try:
      alt = _fraction(g[6])
      if alt < 0:
        raise ValueError("negative altitude")
      alt_ref = _first_int(g.get(5, 0))
      if alt_ref not in (0, 1):
        raise ValueError(f"altitude reference {alt_ref}")
    except (ValueError, TypeError) as e:
      problems.append(f"GPSAltitude: {e}")
      alt, alt_ref = None, 0
  return GPS(dms[2], refs[1], dms[4], refs[3], alt, alt_ref)


def _ifds(exif, problems: list) -> dict:
  ifds = {0: dict(exif)}
  for ifd in (EXIF_IFD, GPS_IFD):
    try:
      ifds[ifd] = dict(exif.get_ifd(ifd))
    except Exception as e:  # noqa: BLE001 -- a broken sub-IFD loses only its fields
      problems.append(f"{'EXIF' if ifd == EXIF_IFD else 'GPS'} IFD: unreadable ({e})")
      ifds[ifd] = {}
  return ifds


def _load_ifds(path: Path, problems: list) -> Optional[dict]:
  """{0: IFD0, EXIF_IFD: ..., GPS_IFD: ...} as Pillow reads them, or None. Sub-IFDs are
  read while the file is open (Pillow reads a TIFF's lazily). TIFFs Pillow cannot decode
  (16-bit RGB...) still give their tags: Pillow's Exif parses a TIFF's IFDs from bytes."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      return _ifds(im.getexif(), problems)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    with open(path, "rb") as f:
      head = f.read(4)
    if head not in (b"II*\x00", b"MM\x00*"):
      problems.append(f"EXIF: unreadable ({type(e).__name__}: {e})")
      return None
  try:
    exif = Image.Exif()
    exif.load(path.read_bytes())
    return _ifds(exif, problems)
  except Exception as e:  # noqa: BLE001 -- any parse failure only costs the metadata
    problems.append(f"EXIF: unreadable ({type(e).__name__}: {e})")
    return None


def read_photo_metadata(path) -> PhotoMetadata:
  """The EXIF record of an image file (see module doc); InputError if there is no file."""
  path = Path(path)
  if not path.is_file():
    raise InputError(path, "no such file")
  problems: list = []
  ifds = _load_ifds(path, problems)
  if ifds is None:
    return PhotoMetadata(source=path.name, problems=tuple(problems))
  values = {}
  for field, ifd, tag, kind in _FIELDS:
    if tag not in ifds[ifd]:
      continue
    try:
      values[field] = _convert(kind, ifds[ifd][tag])
    except (ValueError, TypeError) as e:
      problems.append(f"{_TAG_NAME[tag]}: {e}")
  orientation = ifds[0].get(274, 1)
  if not isinstance(orientation, int) or not 1 <= orientation <= 8:
    if 274 in ifds[0]:
      problems.append(f"Orientation: {orientation!r} is not 1..8")
    orientation = 1
  gps = _gps(ifds[GPS_IFD], problems)
  return PhotoMetadata(source=path.name, orientation=orientation, gps=gps,
                       problems=tuple(problems), **values)


# --------------------------------------------------------------------------- writing

def _ascii(s: str) -> bytes:
  # EXIF ASCII is nominally 7-bit; UTF-8 is what cameras and exiftool write beyond it.
  return s.encode("utf-8") + b"\0"


def _rat(f: Fraction, signed: bool) -> tuple:
  lim = 2**31 - 1 if signed else 2**32 - 1
  f = Fraction(f)
  if abs(f.numerator) > lim or f.denominator > lim:
    f = f.limit_denominator(lim)
  return (f.numerator, f.denominator)


def _entry(field: str, tag: int, kind: str, v) -> tuple:
  if kind in ("text", "copyright", "datetime", "offset", "subsec"):
    return (tag, ASCII, _ascii(v))
  if kind == "positive":
    return (tag, RATIONAL, (_rat(v, False),))
  if kind == "signed":
    return (tag, SRATIONAL, (_rat(v, True),))
  if kind in ("short", "iso"):
    return (tag, SHORT, (int(v),))
  if kind == "lensspec":
    return (tag, RATIONAL, tuple((0, 0) if x is None else _rat(x, False) for x in v))
  raise AssertionError(kind)


def _entries(meta: PhotoMetadata, ifd: int, skip=()) -> list:
  out = []
  for field, where, tag, kind in _FIELDS:
    v = getattr(meta, field)
    if where == ifd and v is not None and field not in skip:
      out.append(_entry(field, tag, kind, v))
  return out


def ifd0_entries(meta: PhotoMetadata) -> list:
  """IFD0 entries of the record: DateTime, Artist, Copyright, ImageDescription. Make,
  Model and Software are the DNG writer's to choose (see jisp.core.dng.camera_names)."""
  return _entries(meta, 0, skip=("make", "model", "software"))


def exif_entries(meta: PhotoMetadata) -> list:
  """The EXIF IFD of the record, ExifVersion first (always written)."""
  return [(36864, UNDEFINED, EXIF_VERSION)] + _entries(meta, EXIF_IFD)


def gps_entries(meta: PhotoMetadata) -> Optional[list]:
  """The GPS IFD of the record, None when it has no position."""
  g = meta.gps
  if g is None:
    return None
  out = [(0, BYTE, bytes((2, 3, 0, 0))),
         (1, ASCII, _ascii(g.latitude_ref)),
         (2, RATIONAL, tuple(_rat(x, False) for x in g.latitude)),
         (3, ASCII, _ascii(g.longitude_ref)),
         (4, RATIONAL, tuple(_rat(x, False) for x in g.longitude))]
  if g.altitude is not None:
    out += [(5, BYTE, bytes((int(g.altitude_ref),))), (6, RATIONAL, (_rat(g.altitude, False),))]
  return out
