"""RAW compression by storing only the rendered JPEG (InvISP Sec. 6.1, Eq. 11-12).

  C_ratio = B_BMP / B_JPEG,    B_BMP = 54 + H * W * b / 8   (bytes)
  BPP     = 8 * B_JPEG / (H * W)

H, W, b: height, width and bit depth of the RAW data (the Bayer mosaic: one sample per
pixel); B_JPEG: size of the stored JPEG file in bytes; 54 bytes is the BMP header. The
paper does not say which b it used: its Table 6 (ratio x BPP = 16.3 for the 14-bit Nikon
D700, 14.3 for the 12-bit Canon 5D) suggests a 16-bit container for at least one camera,
so b is an argument: the sensor's bit depth by default (`Capture.bits`), 16 for the uint16
container a RAW decoder hands out.

Pure arithmetic on sizes: the JPEG itself comes from jisp.core.images.encode_jpeg.
"""
from __future__ import annotations

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
