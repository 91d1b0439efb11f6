"""Image inputs: 16-bit PNGs are read at full depth (PIL alone would give 8 bits)."""
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from jisp.core import images

imagecodecs = pytest.importorskip(
    "imagecodecs", reason="imagecodecs (the 16-bit PNG decoder) is not installed")


def _gradient16(h=37, w=53, channels=3):
  """Every sample distinct in its low byte: an 8-bit read cannot reproduce it."""
  n = h * w * channels
  v = (np.arange(n, dtype=np.int64) * 40503) % 65536
  return v.reshape(h, w, channels).astype(np.uint16)


def _png_with_exif(data: bytes, exif_blob: bytes) -> bytes:
  """An eXIf chunk inserted before the first IDAT, where the PNG spec allows it."""
  i = data.index(b"IDAT") - 4
  chunk = (len(exif_blob).to_bytes(4, "big") + b"eXIf" + exif_blob
           + zlib.crc32(b"eXIf" + exif_blob).to_bytes(4, "big"))
  return data[:i] + chunk + data[i:]


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_png_is_read_exactly(tmp_path, channels):
  a = _gradient16(channels=channels)
  p = tmp_path / "g.png"
  p.write_bytes(imagecodecs.png_encode(a))
  with Image.open(p) as im:  # the bug this guards against: PIL keeps 8 bits
    assert np.asarray(im).dtype == np.uint8
  img, bits = images.read_image(p)
  assert bits == 16 and img.dtype == np.float32 and img.shape == (37, 53, 3)
  assert np.array_equal(np.round(img * 65535).astype(np.uint16), a[..., :3])


def test_16bit_png_orientation_is_applied(tmp_path):
  a = _gradient16()
  e = Image.Exif()
  e[274] = 6
  p = tmp_path / "o.png"
  p.write_bytes(_png_with_exif(imagecodecs.png_encode(a), e.tobytes()))
  img, bits = images.read_image(p)
  assert bits == 16
  assert np.array_equal(np.round(img * 65535).astype(np.uint16), np.rot90(a, -1))


def test_8bit_png_unchanged(tmp_path):
  a = (_gradient16() >> 8).astype(np.uint8)
  Image.fromarray(a).save(tmp_path / "e.png")
  img, bits = images.read_image(tmp_path / "e.png")
  assert bits == 8 and np.array_equal(np.round(img * 255).astype(np.uint8), a)


def test_16bit_png_without_imagecodecs_fails_clearly(tmp_path, monkeypatch):
  p = tmp_path / "g.png"
  p.write_bytes(imagecodecs.png_encode(_gradient16()))
  monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import now raises ImportError
  with pytest.raises(images.ImageError, match=r"g.png: 16-bit PNG needs the imagecodecs"):
    images.read_image(p)


def test_broken_16bit_png(tmp_path):
  data = imagecodecs.png_encode(_gradient16())
  p = tmp_path / "b.png"
  p.write_bytes(data[: len(data) // 2])
  with pytest.raises(images.ImageError, match="b.png: unreadable"):
    images.read_image(p)
