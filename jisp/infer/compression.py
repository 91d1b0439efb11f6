"""RAW compression by storing only the rendered JPEG (InvISP Sec. 6.1, Eq. 11-12).

  C_ratio = B_BMP / B_JPEG,    B_BMP = 54 + H * W * b / 8   (bytes)
  BPP     = 8 * B_JPEG / (H * W)

H, W, b: height, width and bit depth of the RAW data (the Bayer mosaic: one sample per
pixel); B_JPEG: size of the stored JPEG file in bytes; 54 bytes is the BMP header. The
paper does not say which b it used: its Table 6 (ratio x BPP = 16.3 for the 14-bit Nikon
D700, 14.3 for the 12-bit Canon 5D) suggests a 16-bit container for at least one camera,
so b is an argument: the sensor's bit depth by default (`Capture.bits`), 16 for the uint16
container a RAW decoder hands out.

Pure numpy; `encode_jpeg` imports Pillow lazily.
"""
from __future__ import annotations

import io

import numpy as np

BMP_HEADER_BYTES = 54


def bmp_bytes(height: int, width: int, bits: int) -> float:
  """Eq. 12: size in bytes of the RAW data stored as an uncompressed BMP."""
  if height < 1 or width < 1 or not 1 <= bits <= 32:
    raise ValueError(f"bad RAW size {height}x{width} at {bits} bits")
  return BMP_HEADER_BYTES + height * width * bits / 8.0


def compression_ratio(jpeg_bytes: int, height: int, width: int, bits: int) -> float:
  """Eq. 11: B_BMP / B_JPEG."""
  if jpeg_bytes <= 0:
    raise ValueError(f"JPEG size must be positive, got {jpeg_bytes} bytes")
  return bmp_bytes(height, width, bits) / float(jpeg_bytes)


def bits_per_pixel(jpeg_bytes: int, height: int, width: int) -> float:
  """Bits of the stored JPEG per RAW pixel."""
  if height < 1 or width < 1:
    raise ValueError(f"bad RAW size {height}x{width}")
  return 8.0 * jpeg_bytes / float(height * width)


def stats(jpeg_bytes: int, height: int, width: int, bits: int) -> dict:
  """{'jpeg_bytes', 'bmp_bytes', 'compression_ratio', 'bpp'} of one stored image."""
  return {"jpeg_bytes": int(jpeg_bytes), "bmp_bytes": bmp_bytes(height, width, bits),
          "compression_ratio": compression_ratio(jpeg_bytes, height, width, bits),
          "bpp": bits_per_pixel(jpeg_bytes, height, width)}


def to_uint8(rgb) -> np.ndarray:
  """[0, 1] float (or uint8) image -> uint8, rounded."""
  x = np.asarray(rgb)
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_jpeg(rgb, quality: int = 90, subsampling: str = "4:2:0") -> bytes:
  """A real baseline JPEG (libjpeg via Pillow) of an (H, W, 3) image in [0, 1] or uint8."""
  from PIL import Image
  ss = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
  if subsampling not in ss:
    raise ValueError(f"unknown subsampling {subsampling!r}; expected one of {tuple(ss)}")
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(to_uint8(rgb))).save(
      buf, format="JPEG", quality=int(quality), subsampling=ss[subsampling])
  return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1] of JPEG bytes."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), np.float32) / 255.0
