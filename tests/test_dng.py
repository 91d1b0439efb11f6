"""DNG writer: rawpy (LibRaw) must read back exactly what was written."""
import os

import numpy as np
import pytest
import rawpy
import tifffile

from jisp.data import dng
from jisp.data.raw_io import _bayer_from_colors, read_capture, usable_wb

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
# Canon 550D ColorMatrix1 (XYZ -> camera), a realistic invertible matrix.
CM = np.array([[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534],
               [-0.0416, 0.1540, 0.6039]])
BLACK = (60, 62, 63, 61)  # per site, deliberately all different
WHITE = 4000
NEUTRAL = (0.5, 1.0, 0.7)


def _mosaic(h=64, w=96, seed=0):
  return np.random.default_rng(seed).integers(min(BLACK), WHITE + 1, (h, w)).astype(np.uint16)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_round_trip_every_layout(tmp_path, pattern):
  m = _mosaic()
  p = dng.write_dng(tmp_path / f"{pattern}.dng", m, pattern, BLACK, WHITE, NEUTRAL, CM,
                    make="Acme", model="Cam 1")
  assert p == tmp_path / f"{pattern}.dng" and p.is_file()
  with rawpy.imread(str(p)) as raw:
    assert np.array_equal(raw.raw_image_visible, m)
    colors = raw.raw_colors_visible
    assert _bayer_from_colors(colors[:2, :2], raw.color_desc) == pattern
    # the layout repeats with period 2 over the whole frame
    assert np.array_equal(colors, np.tile(colors[:2, :2], (32, 48)))
    blpc = raw.black_level_per_channel
    assert [blpc[c] for c in colors[:2, :2].reshape(-1)] == list(BLACK)
    assert raw.white_level == WHITE
    wb = np.array(raw.camera_whitebalance[:3])
    expect = 1.0 / np.array(NEUTRAL)
    np.testing.assert_allclose(wb / wb[1], expect / expect[1], rtol=1e-5)
    rgb = raw.postprocess(no_auto_bright=True)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8 and rgb.std() > 0
  cap = read_capture(p)
  assert np.array_equal(cap.mosaic, m) and cap.pattern == pattern
  assert cap.black_level.tolist() == list(BLACK) and cap.white_level == WHITE
  assert cap.wb_source == "camera" and cap.camera == "Acme Cam 1"
  np.testing.assert_allclose(cap.wb, [2.0, 1.0, 1 / 0.7], rtol=1e-5)
  np.testing.assert_allclose(cap.color_matrix, CM, atol=1e-6)


def test_tags_written(tmp_path):
  p = dng.write_dng(tmp_path / "t.dng", _mosaic(), "GRBG", 64, WHITE, NEUTRAL, CM,
                    orientation=6, make="jisp", model="m", unique_model="jisp unique")
  with tifffile.TiffFile(p) as tf:
    t = {x.code: x.value for x in tf.pages[0].tags.values()}
  assert t[262] == 32803 and t[259] == 1                       # CFA, uncompressed
  assert bytes(t[33422]) == bytes([1, 0, 2, 1])                # G R / B G
  assert int(t[274]) == 6 and t[50708] == "jisp unique"
  assert int(t[50778]) == 21                                   # D65
  assert t[50714] == 64 and 50713 not in t                     # scalar black, no repeat dim
  cm = np.array(t[50721], float).reshape(9, 2)
  np.testing.assert_allclose((cm[:, 0] / cm[:, 1]).reshape(3, 3), CM, atol=1e-6)


def test_fractional_black_is_stored_as_rational(tmp_path):
  p = dng.write_dng(tmp_path / "f.dng", _mosaic(), "RGGB", (60.5, 62, 63, 61.25), WHITE,
                    NEUTRAL, CM)
  with tifffile.TiffFile(p) as tf:
    v = np.array(tf.pages[0].tags[50714].value, float).reshape(4, 2)
  np.testing.assert_allclose(v[:, 0] / v[:, 1], [60.5, 62, 63, 61.25])


def test_castable_dtypes_round_trip(tmp_path):
  m = _mosaic()
  for arr in (m.astype(np.int32), m.astype(np.float64)):
    p = dng.write_dng(tmp_path / "c.dng", arr, "BGGR", BLACK, WHITE, NEUTRAL, CM)
    with rawpy.imread(str(p)) as raw:
      assert np.array_equal(raw.raw_image_visible, m)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mosaic=np.zeros((63, 96), np.uint16)), "even"),
    (dict(mosaic=np.zeros((64, 96, 3), np.uint16)), "2-D"),
    (dict(mosaic=np.full((64, 96), 0.5)), "whole numbers"),
    (dict(mosaic=np.full((64, 96), -1, np.int32)), "uint16"),
    (dict(mosaic=np.full((64, 96), 70000, np.int64)), "uint16"),
    (dict(pattern="RGBG"), "unknown Bayer pattern 'RGBG'"),
    (dict(black_level=(1, 2, 3)), "black_level"),
    (dict(black_level=5000), "below white_level"),
    (dict(white_level=70000), "white_level"),
    (dict(as_shot_neutral=(0.5, 0, 1)), "as_shot_neutral"),
    (dict(color_matrix=np.eye(4)), "3x3"),
    (dict(color_matrix=np.zeros((3, 3))), "singular"),
    (dict(orientation=9), "orientation"),
    (dict(make=""), "make"),
])
def test_bad_inputs_raise_clearly(tmp_path, kwargs, match):
  args = dict(mosaic=_mosaic(), pattern="RGGB", black_level=BLACK, white_level=WHITE,
              as_shot_neutral=NEUTRAL, color_matrix=CM)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    dng.write_dng(tmp_path / "bad.dng", **args)
  assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_write_is_atomic(tmp_path):
  target = tmp_path / "a.dng"
  dng.write_dng(target, _mosaic(seed=1), "RGGB", BLACK, WHITE, NEUTRAL, CM)
  first = target.read_bytes()
  # A failing validation leaves the previous file intact.
  with pytest.raises(ValueError):
    dng.write_dng(target, _mosaic(seed=2), "XXXX", BLACK, WHITE, NEUTRAL, CM)
  assert target.read_bytes() == first
  # A failing rename (the target is a folder) removes the temp file.
  folder = tmp_path / "dir.dng"
  folder.mkdir()
  with pytest.raises(OSError):
    dng.write_dng(folder, _mosaic(), "RGGB", BLACK, WHITE, NEUTRAL, CM)
  assert sorted(os.listdir(tmp_path)) == ["a.dng", "dir.dng"]
  # Overwriting replaces the content completely.
  dng.write_dng(target, _mosaic(seed=3), "RGGB", BLACK, WHITE, NEUTRAL, CM)
  with rawpy.imread(str(target)) as raw:
    assert np.array_equal(raw.raw_image_visible, _mosaic(seed=3))


def test_neutral_from_wb_inverts_reader_wb(tmp_path):
  gains = np.array([2.1, 1.0, 1.6])
  n = dng.neutral_from_wb(gains)
  assert n[1] == 1.0
  p = dng.write_dng(tmp_path / "n.dng", _mosaic(), "RGGB", BLACK, WHITE, n, CM)
  with rawpy.imread(str(p)) as raw:
    np.testing.assert_allclose(usable_wb(raw.camera_whitebalance), gains, rtol=1e-5)
