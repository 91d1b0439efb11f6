"""Camera RAW files in: a Bayer `Capture` (mosaic + metadata) and LibRaw's sRGB render.

Everything rawpy reports is checked rather than trusted: the CFA layout is read for the
visible area (never assumed RGGB), placeholder white balances (LibRaw's -1, zeros, all-ones)
fall back to daylight and then gray-world, and anything that is not a plain RGB Bayer
mosaic (X-Trans, Foveon, linear DNG, CMYG) or not a readable RAW file raises
`RawFormatError` with one line naming the file.

Orientation: `Capture.mosaic` stays in sensor order and `Capture.orientation` is the EXIF
code (1..8). `apply_orientation` is the single helper used for every array that must be
shown upright, so RAW targets and sRGB renders are rotated identically.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from jisp.core import camera as camera_lib
from jisp.core.camera import BAYER_PATTERNS, SRGB_TO_XYZ, CameraProfile, check_pattern
from jisp.core.errors import InputError
from jisp.core.images import apply_orientation

WB_SOURCES = ("camera", "daylight", "gray_world")

# LibRaw's `flip` (sizes.flip) -> EXIF orientation. LibRaw maps EXIF o to flip with the
# string "50132467"[o & 7]; this is its inverse (checked against postprocess in the tests).
_FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}

# A white balance gain outside this range (relative to green) is a placeholder or garbage.
_WB_RANGE = (0.1, 10.0)
# Gray-world ignores 2x2 blocks with any site above this fraction of the range (clipped).
_SATURATION = 0.98


class RawFormatError(InputError):
  """A file that is not a readable RGB Bayer RAW; str() is one line naming file and reason."""

  def __init__(self, path, reason: str):
    self.reason = " ".join(str(reason).split())  # one line, whatever LibRaw said
    super().__init__(path, self.reason)


@dataclasses.dataclass(frozen=True, eq=False)
class Capture:
  """One Bayer exposure. Arrays are numpy; `mosaic` is in sensor orientation.

  black_level: float32 (4,) per CFA site in row-major 2x2 order (site k of `pattern`).
  wb: float32 (3,) R, G, B gains actually used (G = 1); wb_source says where they came from.
  camera_wb / daylight_wb: LibRaw's 4 values (R, G, B, G2) verbatim.
  color_matrix: float32 (3, 3) XYZ -> camera (DNG ColorMatrix / LibRaw rgb_xyz_matrix
    convention), None when the file and LibRaw know none.
  rgb_cam: float32 (3, 3) camera -> linear sRGB, rows sum to 1 (LibRaw's rgb_cam).
  linearization: uint16 (65536,) curve LibRaw applied while decoding, None if identity.
  """
  path: str
  mosaic: np.ndarray
  pattern: str
  black_level: np.ndarray
  white_level: float
  linearization: Optional[np.ndarray]
  camera_wb: tuple
  daylight_wb: tuple
  wb: np.ndarray
  wb_source: str
  color_matrix: Optional[np.ndarray]
  rgb_cam: np.ndarray
  orientation: int
  camera: str
  bits: int

  def profile(self) -> CameraProfile:
    """What a DNG of this camera needs (layout, levels, white balance, matrices)."""
    return CameraProfile.from_dict(dict(
        pattern=self.pattern, black_level=np.asarray(self.black_level).tolist(),
        white_level=float(self.white_level), wb=np.asarray(self.wb).tolist(),
        color_matrix=None if self.color_matrix is None else np.asarray(self.color_matrix),
        rgb_cam=np.asarray(self.rgb_cam), bits=int(self.bits)), camera=self.camera)

  @property
  def shape(self) -> tuple:
    return self.mosaic.shape


# --------------------------------------------------------------------------- orientation

def exif_orientation(flip: int) -> int:
  """LibRaw `sizes.flip` -> EXIF orientation 1..8 (unknown codes count as upright)."""
  return _FLIP_TO_EXIF.get(int(flip), 1)


def orient_pattern(pattern: str, orientation: int) -> str:
  """The CFA layout of `apply_orientation(mosaic, orientation)` for an even-sized mosaic.

  With even H and W every orientation maps 2x2 tiles onto 2x2 tiles, so the new tile is
  just the old tile turned the same way.
  """
  tile = np.array(list(check_pattern(pattern))).reshape(2, 2)
  return "".join(apply_orientation(tile, orientation).reshape(-1))


# --------------------------------------------------------------------------- colour

def usable_color_matrix(color_matrix) -> Optional[np.ndarray]:
  """float32 (3, 3) XYZ->camera, or None when absent, non-finite or singular (LibRaw
  reports zeros when it has none, and a singular one cannot be turned into rgb_cam)."""
  if color_matrix is None:
    return None
  m = np.asarray(color_matrix, np.float64)
  if m.shape != (3, 3) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-6:
    return None
  if np.any(np.abs((m @ SRGB_TO_XYZ).sum(axis=1)) < 1e-6):
    return None
  return m.astype(np.float32)


def rgb_cam_from_color_matrix(color_matrix) -> np.ndarray:
  """LibRaw's cam_xyz_coeff: XYZ->camera matrix -> camera->sRGB matrix (rows sum to 1)."""
  if usable_color_matrix(color_matrix) is None:
    raise ValueError("color_matrix must be a finite, invertible 3x3 XYZ->camera matrix")
  return camera_lib.rgb_cam_from_color_matrix(color_matrix).astype(np.float32)


def usable_wb(wb4) -> Optional[np.ndarray]:
  """(R, G, B) gains normalised to G = 1, or None for a missing / placeholder balance.

  Rejected: fewer than 3 values, non-finite or non-positive entries (LibRaw writes -1 or
  0 when the file has none), all three equal (all-ones means "not recorded"), or a gain
  outside [0.1, 10] relative to green.
  """
  try:
    w = np.asarray(list(wb4)[:3], np.float64)
  except (TypeError, ValueError):
    return None
  if w.shape != (3,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
    return None
  if np.allclose(w, w[1], rtol=1e-6, atol=0):
    return None
  g = w / w[1]
  if np.any(g < _WB_RANGE[0]) or np.any(g > _WB_RANGE[1]):
    return None
  return g.astype(np.float32)


def site_planes(mosaic, pattern: str) -> dict:
  """{colour letter or 'G2': (H/2, W/2) plane} of a mosaic; the 2nd green is 'G2'."""
  p = check_pattern(pattern)
  out = {}
  for k, ch in enumerate(p):
    key = ch if ch not in out else "G2"
    out[key] = mosaic[k // 2::2, k % 2::2]
  return out


def gray_world_wb(mosaic, pattern: str, black_level, white_level) -> np.ndarray:
  """(R, G, B) gains (G = 1) making the mean of unclipped 2x2 blocks gray."""
  p = check_pattern(pattern)
  black = np.broadcast_to(np.asarray(black_level, np.float64), (4,))
  m = np.asarray(mosaic)
  h, w = m.shape[0] // 2 * 2, m.shape[1] // 2 * 2
  sites = [(m[k // 2:h:2, k % 2:w:2].astype(np.float64) - black[k])
           / (float(white_level) - black[k]) for k in range(4)]
  ok = np.all(np.stack(sites) < _SATURATION, axis=0)
  if not ok.any():  # everything clipped: nothing to estimate from
    ok = np.ones_like(ok)
  mean = {"R": [], "G": [], "B": []}
  for k, ch in enumerate(p):
    mean[ch].append(np.clip(sites[k][ok], 0, None).mean())
  r, g, b = (float(np.mean(mean[c])) for c in "RGB")
  if min(r, g, b) <= 0:  # black frame: no information, keep neutral gains
    return np.ones(3, np.float32)
  return np.clip(np.array([g / r, 1.0, g / b]), *_WB_RANGE).astype(np.float32)


def choose_wb(camera_wb, daylight_wb, mosaic, pattern, black_level, white_level):
  """(gains (3,) with G = 1, source): camera if usable, else daylight, else gray world."""
  for source, wb4 in (("camera", camera_wb), ("daylight", daylight_wb)):
    g = usable_wb(wb4)
    if g is not None:
      return g, source
  return gray_world_wb(mosaic, pattern, black_level, white_level), "gray_world"


# --------------------------------------------------------------------------- reading

class _IParams(ctypes.Structure):
  # Leading fields of LibRaw >= 0.20 libraw_iparams_t (rawpy does not expose make/model).
  _fields_ = [("guard", ctypes.c_char * 4), ("make", ctypes.c_char * 64),
              ("model", ctypes.c_char * 64), ("software", ctypes.c_char * 64),
              ("normalized_make", ctypes.c_char * 64),
              ("normalized_model", ctypes.c_char * 64), ("maker_index", ctypes.c_uint),
              ("raw_count", ctypes.c_uint), ("dng_version", ctypes.c_uint),
              ("is_foveon", ctypes.c_uint), ("colors", ctypes.c_int),
              ("filters", ctypes.c_uint)]


@functools.lru_cache(maxsize=1)
def _libraw_c():
  """rawpy's own bundled libraw C API, or None where it is not shipped as a shared lib."""
  import rawpy
  for name in ("libraw_r.so", "libraw_r.dylib", "libraw.dll", "libraw_r.dll"):
    p = os.path.join(os.path.dirname(rawpy.__file__), name)
    if os.path.exists(p):
      try:
        lib = ctypes.CDLL(p)
        lib.libraw_init.restype = ctypes.c_void_p
        lib.libraw_init.argtypes = [ctypes.c_uint]
        lib.libraw_open_file.restype = ctypes.c_int
        lib.libraw_open_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.libraw_get_iparams.restype = ctypes.POINTER(_IParams)
        lib.libraw_get_iparams.argtypes = [ctypes.c_void_p]
        lib.libraw_close.argtypes = [ctypes.c_void_p]
        return lib
      except (OSError, AttributeError):
        return None
  return None


def _libraw_identity(path) -> Optional[dict]:
  """{'make', 'model', 'is_foveon'} from LibRaw's header parse (no decoding), or None."""
  lib = _libraw_c()
  if lib is None:
    return None
  h = lib.libraw_init(0)
  if not h:
    return None
  try:
    if lib.libraw_open_file(h, os.fsencode(path)) != 0:
      return None
    ip = lib.libraw_get_iparams(h).contents
    dec = lambda b: b.decode("ascii", "replace").strip()
    return {"make": dec(ip.make), "model": dec(ip.model), "is_foveon": bool(ip.is_foveon)}
  finally:
    lib.libraw_close(h)


def _tiff_tags(path) -> dict:
  """IFD0 tags {code: value} of a TIFF-based file (DNG, NEF, CR2...), {} otherwise."""
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic not in (b"II*\x00", b"MM\x00*"):
    return {}
  import tifffile
  try:
    with tifffile.TiffFile(path) as tf:
      return {t.code: t.value for t in tf.pages[0].tags.values()}
  except Exception:  # a broken TIFF header: LibRaw already decided it is readable
    return {}


def _dng_color_matrix(tags: dict) -> Optional[np.ndarray]:
  """XYZ->camera from DNG ColorMatrix1/2 (LibRaw reads but rawpy does not report it).

  The D65 one (CalibrationIlluminant 21) when present, else ColorMatrix2, else 1.
  """
  mats = {}
  for cm, ill in ((50721, 50778), (50722, 50779)):
    if cm in tags:
      v = np.asarray(tags[cm], np.float64).reshape(-1)
      if v.size == 18:  # 9 rationals as num, den pairs
        v = v[0::2] / np.where(v[1::2] == 0, 1, v[1::2])
      if v.size == 9:
        mats[cm] = (np.asarray(v).reshape(3, 3), int(np.asarray(tags.get(ill, 0))))
  if not mats:
    return None
  for m, ill in mats.values():
    if ill == 21:
      return m.astype(np.float32)
  return mats[max(mats)][0].astype(np.float32)


def _bayer_from_colors(colors2x2, color_desc: bytes) -> str:
  """LibRaw colour indices of the 2x2 visible tile + color_desc -> 'RGGB'-style string."""
  desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, bytes) else str(
      color_desc)
  letters = "".join(desc[int(c)] if 0 <= int(c) < len(desc) else "?"
                    for c in np.asarray(colors2x2).reshape(-1))
  if letters not in BAYER_PATTERNS:
    raise ValueError(f"CFA tile {letters!r} (colours {desc!r}) is not an RGB Bayer layout")
  return letters


def _raw_pattern(raw, path) -> np.ndarray:
  """LibRaw colour indices of the visible area's top-left 2x2 tile; non-Bayer -> error."""
  try:
    pattern = raw.raw_pattern
  except NotImplementedError as e:
    raise RawFormatError(path, f"unsupported colour filter array ({e})") from None
  if pattern is None:
    raise RawFormatError(path, "no colour filter array: a linear (demosaiced) DNG or "
                         "3-colour-per-pixel sensor (Foveon), not a Bayer mosaic")
  n = pattern.shape[0]
  if n == 6:
    raise RawFormatError(path, "X-Trans 6x6 colour filter array, not a 2x2 Bayer mosaic")
  if n == 1:
    raise RawFormatError(path, "monochrome sensor (no colour filter array)")
  if n != 2:
    raise RawFormatError(path, f"{n}x{n} colour filter array, not a 2x2 Bayer mosaic")
  s = raw.sizes
  # raw_pattern is anchored at the full raw frame's (0, 0); the visible area starts at the
  # margins, which may be odd, so read the colours where the visible area actually starts.
  return np.array([[raw.raw_color(s.top_margin + y, s.left_margin + x) for x in (0, 1)]
                   for y in (0, 1)])


def read_capture(path) -> Capture:
  """Read a Bayer RAW file into a `Capture`; anything else raises RawFormatError."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise RawFormatError(path, "empty file (0 bytes)")
  try:  # LibRaw reports an unreadable file as a generic I/O error: say what it is
    with open(path, "rb") as f:
      f.read(1)
  except OSError as e:
    raise RawFormatError(path, f"cannot read ({e.strerror or e})") from None
  import rawpy
  try:
    with rawpy.imread(str(path)) as raw:
      return _capture_from(raw, path)
  except rawpy.LibRawFileUnsupportedError:
    raise RawFormatError(path, "not a RAW file LibRaw can decode (unknown format or "
                         "corrupt header)") from None
  except rawpy.LibRawIOError:
    raise RawFormatError(path, "truncated or unreadable: LibRaw hit an I/O error / "
                         "unexpected end of file while decoding") from None
  except rawpy.LibRawError as e:
    raise RawFormatError(path, f"LibRaw failed: {type(e).__name__}: {e}") from None


def _capture_from(raw, path: Path) -> Capture:
  import rawpy
  ident = _libraw_identity(path) or {}
  if ident.get("is_foveon"):
    raise RawFormatError(path, "Foveon sensor (3 colours per pixel), not a Bayer mosaic")
  if raw.raw_type != rawpy.RawType.Flat:
    raise RawFormatError(path, f"raw data is {raw.raw_type.name} (several colours per "
                         "pixel, e.g. linear DNG or Foveon), not a Bayer mosaic")
  colors = _raw_pattern(raw, path)
  if raw.num_colors not in (3, 4):
    raise RawFormatError(path, f"{raw.num_colors} colour channels, expected RGB")
  try:
    pattern = _bayer_from_colors(colors, raw.color_desc)
  except ValueError as e:
    raise RawFormatError(path, str(e)) from None

  vis = raw.raw_image_visible
  if vis.ndim != 2 or vis.shape[0] < 2 or vis.shape[1] < 2:
    raise RawFormatError(path, f"visible raw area has shape {vis.shape}, not a 2-D mosaic")
  # Cropping the last odd row/column keeps the top-left phase, hence `pattern`.
  h, w = vis.shape[0] // 2 * 2, vis.shape[1] // 2 * 2
  mosaic = np.array(vis[:h, :w], dtype=np.uint16)  # copy: LibRaw frees its buffer on close

  blpc = list(raw.black_level_per_channel)
  black = np.array([blpc[int(c)] for c in colors.reshape(-1)], np.float32)
  white = float(raw.white_level)
  if not white > black.max():
    raise RawFormatError(path, f"white level {white:g} is not above black level "
                         f"{black.max():g}")

  # LibRaw applies the linearization table (DNG LinearizationTable, NEF curves) while
  # decoding, so raw_image is already linear: we record the curve and never apply it twice.
  curve = np.asarray(raw.tone_curve)
  linearization = None
  if curve.size and not np.array_equal(curve, np.arange(curve.size)):
    linearization = curve.astype(np.uint16).copy()

  tags = _tiff_tags(path)
  color_matrix = usable_color_matrix(np.asarray(raw.rgb_xyz_matrix)[:3, :3])
  if color_matrix is None:
    color_matrix = usable_color_matrix(_dng_color_matrix(tags))
  if color_matrix is not None:
    rgb_cam = rgb_cam_from_color_matrix(color_matrix)
  else:
    lib_cm = np.asarray(raw.color_matrix, np.float32)[:3, :3]
    rgb_cam = lib_cm if np.any(lib_cm) else np.eye(3, dtype=np.float32)

  camera_wb = tuple(float(x) for x in raw.camera_whitebalance)
  daylight_wb = tuple(float(x) for x in raw.daylight_whitebalance)
  wb, wb_source = choose_wb(camera_wb, daylight_wb, mosaic, pattern, black, white)

  make, model = ident.get("make", ""), ident.get("model", "")
  if not make and not model:
    make, model = str(tags.get(271, "")).strip(), str(tags.get(272, "")).strip()
  camera = " ".join(x for x in (make, model) if x) or "unknown"

  return Capture(
      path=str(path), mosaic=mosaic, pattern=pattern, black_level=black,
      white_level=white, linearization=linearization, camera_wb=camera_wb,
      daylight_wb=daylight_wb, wb=wb, wb_source=wb_source, color_matrix=color_matrix,
      rgb_cam=rgb_cam, orientation=exif_orientation(raw.sizes.flip), camera=camera,
      bits=int(np.ceil(np.log2(white + 1))))


# --------------------------------------------------------------------------- rendering

# LibRaw's adjust_maximum_thr. At LibRaw's (and rawpy's) default, 0.75, the render takes the
# data's own maximum as white whenever it lies between 0.75 and 1 of the white level: an
# auto-brightness that depends on the picture, which no camera profile records, so neither
# unprocessing nor a network trained on other files could know it. The protocol renders with
# it off (pair protocol version 3); LIBRAW_ADJUST_MAXIMUM names the default for analysis.
ADJUST_MAXIMUM = 0.0
LIBRAW_ADJUST_MAXIMUM = 0.75


def render_maximum(cap: Capture, threshold: float = ADJUST_MAXIMUM) -> tuple[float, float]:
  """(the file's white level above black, the white LibRaw's render scales to).

  LibRaw's adjust_maximum at `threshold`: when the data's own maximum (above black) lies
  between `threshold` and 1 of the white level, the render takes it as white, so the sRGB
  is brighter than the metadata says by the ratio of the two. At the protocol's threshold
  (off) the two are equal.
  """
  h, w = cap.mosaic.shape
  black = np.asarray(cap.black_level, np.float64).reshape(2, 2)
  data_max = float(np.max(cap.mosaic.astype(np.float64) - np.tile(black, (h // 2, w // 2))))
  maximum = float(cap.white_level) - float(black.max())
  return maximum, adjusted_white(maximum, data_max, threshold)


def adjusted_white(maximum: float, data_max: float,
                   threshold: float = ADJUST_MAXIMUM) -> float:
  """LibRaw's adjust_maximum rule on levels above black (see render_maximum); LibRaw
  ignores thresholds outside (0, 1)."""
  if not 1e-5 < threshold < 1 - 1e-5:
    return maximum
  return data_max if threshold * maximum < data_max < maximum else maximum


def render_srgb(src: Union[str, os.PathLike, Capture], *, oriented: bool = True,
                gamma=(2.222, 4.5)) -> np.ndarray:
  """LibRaw's 8-bit sRGB render of a capture, pixel-aligned with `Capture.mosaic`.

  Camera white balance when it is usable, else the capture's chosen `wb` (user_wb); no
  auto-brightness (neither LibRaw's histogram stretch nor its adjust_maximum), full size,
  LibRaw's default BT.709 gamma (the FiveK protocol of InvISP and the DDPM paper; the
  same pair as jisp.isp.tone.RENDER_GAMMA, written out so that this module needs no JAX).
  LibRaw's own flip is disabled and the EXIF orientation applied by `apply_orientation`
  (when `oriented`), exactly as for the RAW targets.
  """
  cap = src if isinstance(src, Capture) else read_capture(src)
  import rawpy
  kw = dict(no_auto_bright=True, output_bps=8, half_size=False, user_flip=0,
            output_color=rawpy.ColorSpace.sRGB, gamma=tuple(gamma),
            adjust_maximum_thr=ADJUST_MAXIMUM)
  if cap.wb_source == "camera":
    kw["use_camera_wb"] = True
  else:
    r, g, b = (float(x) for x in cap.wb)
    kw["user_wb"] = [r, g, b, g]
  try:
    with rawpy.imread(cap.path) as raw:
      rgb = raw.postprocess(**kw)
  except rawpy.LibRawError as e:
    raise RawFormatError(cap.path, f"LibRaw render failed: {type(e).__name__}: {e}") from None
  h, w = cap.mosaic.shape
  if rgb.shape[0] < h or rgb.shape[1] < w or rgb.shape[0] > h + 1 or rgb.shape[1] > w + 1:
    # e.g. non-square pixels (LibRaw stretches) or 45-degree Fuji sensors.
    raise RawFormatError(cap.path, f"LibRaw render is {rgb.shape[1]}x{rgb.shape[0]} but "
                         f"the mosaic is {w}x{h}: not pixel-aligned")
  rgb = np.ascontiguousarray(rgb[:h, :w])
  return np.ascontiguousarray(apply_orientation(rgb, cap.orientation)) if oriented else rgb
