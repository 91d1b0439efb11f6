"""Image files: reading sRGB inputs, writing PNG / 16-bit TIFF, real JPEG round trips,
and the one EXIF-orientation helper.

JPEG / PNG / TIFF, 8 or 16 bit, are read upright (EXIF orientation applied) into float32
(H, W, 3) in [0, 1]. PIL cannot hold 16-bit RGB (it hands back the high bytes), so TIFFs go
through tifffile and the pixels of 16-bit RGB PNGs through imagecodecs (libpng); everything
else, and every file's EXIF orientation, through PIL. Inputs the network cannot serve --
grayscale, CMYK, unreadable files -- raise `ImageError`, one line naming the file. PIL,
tifffile and imagecodecs are imported when used, so this module imports with numpy alone.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jisp.core.errors import InputError
from jisp.core.fileio import atomic_write_bytes

_TIFF_EXT = (".tif", ".tiff")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageError(InputError):
  """An input image that cannot be used; str() is one line naming the file."""


_ORIENT = {1: lambda x: x, 2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1],
           4: lambda x: x[::-1], 5: lambda x: np.swapaxes(x, 0, 1),
           6: lambda x: np.rot90(x, -1), 7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1),
           8: lambda x: np.rot90(x, 1)}


def apply_orientation(arr, orientation: int) -> np.ndarray:
  """An (H, W, ...) array stored in sensor/file order turned into display order by its EXIF
  orientation 1..8 (the mapping of PIL.ImageOps.exif_transpose)."""
  o = int(orientation)
  if o not in _ORIENT:
    raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
  return _ORIENT[o](np.asarray(arr))


def _upright(a: np.ndarray, orientation: int) -> np.ndarray:
  """Readers ignore an out-of-range orientation tag, as photo viewers do."""
  o = int(orientation)
  return np.ascontiguousarray(apply_orientation(a, o if o in _ORIENT else 1))


def _to_float(a: np.ndarray, path) -> np.ndarray:
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  if a.dtype == np.uint16:
    return a.astype(np.float32) / 65535.0
  if a.dtype.kind == "f":
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)
  raise ImageError(path, f"unsupported sample type {a.dtype} (expected 8- or 16-bit)")


def _read_tiff(path: Path):
  import tifffile
  try:
    with tifffile.TiffFile(path) as tf:
      page = tf.pages[0]
      photometric = getattr(page.photometric, "name", str(page.photometric))
      orient_tag = page.tags.get(274)
      orientation = int(orient_tag.value) if orient_tag is not None else 1
      arr = page.asarray()
  except Exception as e:  # tifffile raises many types for broken files
    raise ImageError(path, f"unreadable TIFF ({type(e).__name__}: {e})") from None
  if photometric == "SEPARATED":
    raise ImageError(path, "CMYK image: convert it to RGB first")
  if photometric in ("MINISBLACK", "MINISWHITE") or arr.ndim == 2:
    raise ImageError(path, "grayscale image: reconstruction needs an RGB image")
  if photometric != "RGB" or arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ImageError(path, f"unsupported TIFF ({photometric}, shape {arr.shape}); "
                     "expected 3-channel RGB")
  bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(arr.dtype, 32)
  return _upright(_to_float(arr[..., :3], path), orientation), bits


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_16bit_rgb(path: Path) -> bool:
  """True for a 16-bit RGB / RGBA PNG (IHDR, which the PNG spec puts first: bit depth at
  byte 24, colour type 2 or 6 at byte 25)."""
  with open(path, "rb") as f:
    head = f.read(26)
  return (len(head) == 26 and head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR"
          and head[24] == 16 and head[25] in (2, 6))


def _read_png16(path: Path, orientation: int):
  try:
    import imagecodecs
  except ImportError:
    raise ImageError(path, "16-bit PNG needs the imagecodecs package to be read at full "
                     "depth (pip install imagecodecs), or save it as a 16-bit TIFF") from None
  try:
    arr = imagecodecs.png_decode(path.read_bytes())
  except Exception as e:  # imagecodecs raises its own error types for broken streams
    raise ImageError(path, f"unreadable PNG ({type(e).__name__}: {e})") from None
  if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ImageError(path, f"unexpected 16-bit PNG decode {arr.dtype} {arr.shape}")
  return _upright(_to_float(arr[..., :3], path), orientation), 16


def _read_pil(path: Path):
  from PIL import Image, ImageOps, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      if im.format == "PNG" and im.mode in ("RGB", "RGBA") and _png_16bit_rgb(path):
        orientation = im.getexif().get(0x0112, 1)
        return _read_png16(path, orientation if isinstance(orientation, int) else 1)
      im.load()
      mode = im.mode
      if mode == "CMYK":
        raise ImageError(path, "CMYK image: convert it to RGB first")
      if mode in _GRAY_MODES:
        raise ImageError(path, f"grayscale image (mode {mode}): reconstruction needs RGB")
      if mode == "P":  # palette: fine if its colours are colours
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      im = ImageOps.exif_transpose(im)
      if im.mode in ("RGBA", "RGBX", "RGBa"):
        im = im.convert("RGB")
      if im.mode not in ("RGB",):
        raise ImageError(path, f"unsupported image mode {im.mode}; expected RGB")
      arr = np.asarray(im)
  except ImageError:
    raise
  except UnidentifiedImageError:
    raise ImageError(path, "not an image file PIL can read (JPEG, PNG, TIFF expected)") from None
  except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt data
    raise ImageError(path, f"unreadable image ({type(e).__name__}: {e})") from None
  return _to_float(arr, path), 8


def read_image(path) -> tuple[np.ndarray, int]:
  """(float32 (H, W, 3) upright in [0, 1], bits per sample) of a JPEG / PNG / TIFF."""
  path = Path(path)
  if not path.is_file():
    raise ImageError(path, "no such file")
  if path.stat().st_size == 0:
    raise ImageError(path, "empty file (0 bytes)")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic in (b"II*\x00", b"MM\x00*"):
    img, bits = _read_tiff(path)
  else:
    img, bits = _read_pil(path)
  if img.shape[0] < 2 or img.shape[1] < 2:
    raise ImageError(path, f"image is {img.shape[1]}x{img.shape[0]}, too small")
  return img, bits


def to_uint8(img) -> np.ndarray:
  """[0, 1] float (or uint8) image -> uint8, rounded."""
  a = np.asarray(img)
  if a.dtype == np.uint8:
    return a
  return np.round(np.clip(a.astype(np.float32), 0, 1) * 255.0).astype(np.uint8)


def to_uint16(img) -> np.ndarray:
  return np.round(np.clip(np.asarray(img, np.float32), 0, 1) * 65535.0).astype(np.uint16)


def write_png(path, img) -> Path:
  """8-bit RGB PNG of a float image in [0, 1] (or uint8), written atomically."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(to_uint8(img))).save(buf, format="PNG")
  return atomic_write_bytes(path, buf.getvalue())


def write_tiff16(path, img) -> Path:
  """16-bit RGB TIFF of a float image in [0, 1], written atomically."""
  import tifffile
  buf = io.BytesIO()
  tifffile.imwrite(buf, to_uint16(img), photometric="rgb", metadata=None)
  return atomic_write_bytes(path, buf.getvalue())


JPEG_SUBSAMPLINGS = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}  # PIL's `subsampling` codes


def encode_jpeg(rgb, quality: int = 90, subsampling: str = "4:2:0") -> bytes:
  """A real baseline JPEG (libjpeg via Pillow) of an (H, W, 3) image in [0, 1] or uint8."""
  from PIL import Image
  if subsampling not in JPEG_SUBSAMPLINGS:
    raise ValueError(f"unknown JPEG subsampling {subsampling!r}; expected one of "
                     f"{tuple(JPEG_SUBSAMPLINGS)}")
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(to_uint8(rgb))).save(
      buf, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLINGS[subsampling])
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """uint8 (H, W, 3) of JPEG bytes."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def jpeg_roundtrip(rgb, quality: int = 90, subsampling: str = "4:2:0") -> np.ndarray:
  """What a viewer shows after storing `rgb` as a real JPEG: uint8 (H, W, 3)."""
  return decode_jpeg(encode_jpeg(rgb, quality, subsampling))
