"""RAW reading: layouts, levels, white balance fallbacks, orientation, rejection of bad files."""
import io

import numpy as np
import pytest
import rawpy
import tifffile
from PIL import Image

from jisp.core import dng
from jisp.data import raw_io
from jisp.data.raw_io import RawFormatError, read_capture
from jisp.isp import bayer

CM = np.array([[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534],
               [-0.0416, 0.1540, 0.6039]])

# file -> (camera, pattern, black, white, wb_source), as documented in SOURCES.md.
REAL = {
    "canon_eos_550d_magiclantern_colorchart.dng": ("Canon EOS Kiss X4", "RGGB", 2056, 15000,
                                                   "camera"),
    "canon_eos_d30_rawsamples.crw": ("Canon EOS D30", "RGGB", 126, 4095, "daylight"),
    "nikon_d1_rawsamples.nef": ("Nikon D1", "BGGR", 0, 4095, "daylight"),
}


def _small_dng(path, pattern="RGGB", orientation=1, h=32, w=48, seed=0, **kw):
  m = np.random.default_rng(seed).integers(64, 4000, (h, w)).astype(np.uint16)
  dng.write_dng(path, m, pattern, 64, 4000, (0.5, 1.0, 0.7), CM, orientation=orientation,
                **kw)
  return m


# --------------------------------------------------------------------------- bad files

def _assert_one_line(err, path, word):
  msg = str(err.value)
  assert isinstance(err.value, ValueError)
  assert "\n" not in msg and str(path) in msg and word in msg.lower(), msg
  assert err.value.path == str(path)


def test_truncated_dng(tmp_path):
  good = tmp_path / "good.dng"
  _small_dng(good)
  data = good.read_bytes()
  bad = tmp_path / "trunc.dng"
  bad.write_bytes(data[:int(len(data) * 0.3)])
  with pytest.raises(RawFormatError) as e:
    read_capture(bad)
  _assert_one_line(e, bad, "truncated")


def test_jpeg_renamed_nef(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "JPEG")
  bad = tmp_path / "photo.nef"
  bad.write_bytes(buf.getvalue())
  with pytest.raises(RawFormatError) as e:
    read_capture(bad)
  _assert_one_line(e, bad, "not a raw file")


def test_random_bytes_dng(tmp_path):
  bad = tmp_path / "noise.dng"
  bad.write_bytes(np.random.default_rng(0).bytes(50_000))
  with pytest.raises(RawFormatError) as e:
    read_capture(bad)
  _assert_one_line(e, bad, "not a raw file")


def test_empty_file(tmp_path):
  bad = tmp_path / "empty.cr2"
  bad.write_bytes(b"")
  with pytest.raises(RawFormatError) as e:
    read_capture(bad)
  _assert_one_line(e, bad, "empty")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.dng"):
    read_capture(tmp_path / "nope.dng")


def _tags_without(codes, neutral=(0.5, 1, 0.7)):
  tags = dng.dng_tags((48, 48), "RGGB", 64, 4000, neutral, CM)
  return [t for t in tags if t[0] not in codes]


def test_xtrans_is_rejected(tmp_path):
  xtrans = (1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
            1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1)
  tags = _tags_without({33421, 33422}) + [(33421, "H", 2, (6, 6), True),
                                          (33422, "B", 36, xtrans, True)]
  p = tmp_path / "xtrans.dng"
  m = np.random.default_rng(0).integers(64, 4000, (48, 48)).astype(np.uint16)
  tifffile.imwrite(p, m, photometric=32803, rowsperstrip=48, extratags=tags,
                   metadata=None, software=False)
  with rawpy.imread(str(p)) as raw:  # LibRaw does decode it, as a 6x6 CFA
    assert raw.raw_pattern.shape == (6, 6)
  with pytest.raises(RawFormatError) as e:
    read_capture(p)
  _assert_one_line(e, p, "x-trans")


def test_linear_dng_is_rejected(tmp_path):
  tags = _tags_without({33421, 33422, 50710, 50711})
  p = tmp_path / "linear.dng"
  rgb = np.random.default_rng(0).integers(64, 4000, (48, 48, 3)).astype(np.uint16)
  tifffile.imwrite(p, rgb, photometric=34892, planarconfig="contig", rowsperstrip=48,
                   extratags=tags, metadata=None, software=False)
  with rawpy.imread(str(p)) as raw:  # readable, but 3 colours per pixel
    assert raw.raw_pattern is None
  with pytest.raises(RawFormatError) as e:
    read_capture(p)
  _assert_one_line(e, p, "not a bayer mosaic")


# --------------------------------------------------------------------------- layout

def test_active_area_anchors_the_cfa(tmp_path):
  """CFAPattern is anchored at the ActiveArea's corner (DNG spec), odd offsets included."""
  h, w = 65, 97
  value = {"R": 1000, "G": 2000, "B": 3000}
  yy, xx = np.mgrid[:h, :w]
  # Active area starts at (1, 3); the written layout is GBRG from there.
  site = ((yy - 1) % 2) * 2 + (xx - 3) % 2
  stored = np.vectorize(lambda k: value["GBRG"[k]])(site).astype(np.uint16)
  tags = dng.dng_tags((64, 96), "GBRG", 0, 4000, (0.5, 1, 0.7), CM) + [
      (50829, "I", 4, (1, 3, 64, 96), True)]  # top, left, bottom, right
  p = tmp_path / "aa.dng"
  tifffile.imwrite(p, stored, photometric=32803, rowsperstrip=h, extratags=tags,
                   metadata=None, software=False)
  cap = read_capture(p)
  with rawpy.imread(str(p)) as raw:
    hv, wv = raw.raw_image_visible.shape
  assert cap.mosaic.shape == (hv // 2 * 2, wv // 2 * 2)
  # Whatever margins LibRaw settles on, each site of `pattern` holds that colour's value.
  for k, ch in enumerate(cap.pattern):
    assert set(np.unique(cap.mosaic[k // 2::2, k % 2::2])) == {value[ch]}, cap.pattern


def test_odd_visible_size_is_cropped_keeping_phase(tmp_path):
  h, w = 33, 47
  m = np.random.default_rng(1).integers(64, 4000, (h, w)).astype(np.uint16)
  tags = dng.dng_tags((h - 1, w - 1), "BGGR", 64, 4000, (0.5, 1, 0.7), CM)
  p = tmp_path / "odd.dng"
  tifffile.imwrite(p, m, photometric=32803, rowsperstrip=h, extratags=tags,
                   metadata=None, software=False)
  cap = read_capture(p)
  assert cap.mosaic.shape == (32, 46) and cap.pattern == "BGGR"
  assert np.array_equal(cap.mosaic, m[:32, :46])
  assert raw_io.render_srgb(cap).shape == (32, 46, 3)


def test_linearization_table_applied_once(tmp_path):
  lut = (np.linspace(0, 1, 256) ** 2 * 4000).astype(np.uint16)
  stored = np.random.default_rng(0).integers(0, 256, (32, 48)).astype(np.uint16)
  p = dng.write_dng(tmp_path / "lin.dng", stored, "RGGB", 0, 4000, (0.5, 1, 0.7), CM,
                    linearization=lut)
  cap = read_capture(p)
  assert np.array_equal(cap.mosaic, lut[stored])  # linear values, not the codes
  assert np.array_equal(cap.linearization[:256], lut)
  _small_dng(tmp_path / "plain.dng")
  assert read_capture(tmp_path / "plain.dng").linearization is None


# --------------------------------------------------------------------------- white balance

@pytest.mark.parametrize("wb4, expect", [
    ([-1.0, 1.027, 2.695, 0.0], None),        # Canon D30: LibRaw's "no as-shot WB"
    ([1.0, 1.0, 1.0, 1.0], None),             # Nikon D1: placeholder
    ([0.0, 0.0, 0.0, 0.0], None),
    ([2.0, 2.0, 2.0, 0.0], None),             # all equal is no balance either
    ([float("nan"), 1.0, 1.5, 0.0], None),
    ([100.0, 1.0, 1.5, 0.0], None),           # R gain 100x green: garbage
    ([1.0, 0.4037, 0.6840, 0.0], [2.4771, 1.0, 1.6943]),  # 550D: odd scale, fine ratios
    ([2.0, 1.0, 1.5, 1.0], [2.0, 1.0, 1.5]),
])
def test_usable_wb(wb4, expect):
  got = raw_io.usable_wb(wb4)
  if expect is None:
    assert got is None
  else:
    np.testing.assert_allclose(got, expect, rtol=1e-3)


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_gray_world_recovers_a_cast(pattern):
  rng = np.random.default_rng(0)
  # gray per 2x2 tile, so every CFA site sees the same scene statistics
  gray = np.kron(rng.uniform(0.05, 0.6, (32, 32)), np.ones((2, 2)))[..., None] * np.ones(3)
  cast = gray / np.array([2.0, 1.0, 1.5])           # a scene needing gains (2, 1, 1.5)
  cast[:8, :8] = [1.0, 0.2, 0.2]                    # clipped red highlight: must be ignored
  black, white = 100.0, 4000.0
  mos = np.asarray(bayer.mosaic(cast, pattern)) * (white - black) + black
  gains = raw_io.gray_world_wb(np.round(mos).astype(np.uint16), pattern, black, white)
  np.testing.assert_allclose(gains, [2.0, 1.0, 1.5], rtol=5e-3)


def test_gray_world_fallback_from_a_file(tmp_path):
  """No colour matrix and an all-ones as-shot neutral: LibRaw has no usable balance."""
  tags = _tags_without({50721, 50778}, neutral=(1, 1, 1))
  m = np.random.default_rng(0).integers(64, 4000, (48, 48)).astype(np.uint16)
  p = tmp_path / "nocolor.dng"
  tifffile.imwrite(p, m, photometric=32803, rowsperstrip=48, extratags=tags,
                   metadata=None, software=False)
  cap = read_capture(p)
  assert cap.wb_source == "gray_world" and cap.color_matrix is None
  np.testing.assert_allclose(cap.wb, raw_io.gray_world_wb(m, "RGGB", 64, 4000))
  assert raw_io.render_srgb(cap).shape == (48, 48, 3)


# --------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_libraw(tmp_path, orientation):
  p = tmp_path / f"o{orientation}.dng"
  _small_dng(p, "GRBG", orientation)
  cap = read_capture(p)
  assert cap.orientation == orientation
  with rawpy.imread(str(p)) as raw:  # LibRaw's own flip as the reference
    ref = raw.postprocess(no_auto_bright=True, use_camera_wb=True, output_bps=8,
                          adjust_maximum_thr=raw_io.ADJUST_MAXIMUM)
  got = raw_io.render_srgb(cap)
  assert got.shape == ref.shape and np.array_equal(got, ref)
  upright = raw_io.render_srgb(cap, oriented=False)
  assert upright.shape == (32, 48, 3)


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_orient_pattern_commutes_with_mosaic(pattern):
  rgb = np.random.default_rng(0).uniform(size=(6, 8, 3)).astype(np.float32)
  for o in range(1, 9):
    lhs = raw_io.apply_orientation(np.asarray(bayer.mosaic(rgb, pattern)), o)
    rhs = np.asarray(bayer.mosaic(np.ascontiguousarray(raw_io.apply_orientation(rgb, o)),
                                  raw_io.orient_pattern(pattern, o)))
    assert np.array_equal(lhs, rhs), (pattern, o)


# --------------------------------------------------------------------------- real files

@pytest.mark.parametrize("name", sorted(REAL))
def test_real_files(raw_dir, name):
  camera, pattern, black, white, wb_source = REAL[name]
  path = raw_dir / name
  cap = read_capture(path)
  with rawpy.imread(str(path)) as raw:
    vis = raw.raw_image_visible.copy()  # the view dies with the handle
    colors = raw.raw_colors_visible
    rawpy_rgb_cam = np.asarray(raw.color_matrix)[:, :3]
    daylight = raw.daylight_whitebalance
  h, w = vis.shape[0] // 2 * 2, vis.shape[1] // 2 * 2
  assert cap.mosaic.dtype == np.uint16 and np.array_equal(cap.mosaic, vis[:h, :w])
  assert cap.camera == camera and cap.pattern == pattern
  assert raw_io._bayer_from_colors(colors[:2, :2], b"RGBG") == pattern
  assert cap.black_level.tolist() == [black] * 4 and cap.white_level == white
  assert cap.bits == (14 if white > 4095 else 12)
  assert cap.wb_source == wb_source and cap.wb[1] == 1.0 and np.all(cap.wb > 0)
  if wb_source == "daylight":
    np.testing.assert_allclose(cap.wb, raw_io.usable_wb(daylight), rtol=1e-6)
  assert cap.color_matrix.shape == (3, 3) and np.any(cap.color_matrix)
  np.testing.assert_allclose(cap.rgb_cam.sum(axis=1), 1.0, atol=1e-4)
  if np.any(rawpy_rgb_cam):  # the DNG: LibRaw's own camera->sRGB, from our formula too
    np.testing.assert_allclose(cap.rgb_cam, rawpy_rgb_cam, atol=1e-3)
  assert cap.orientation == 1 and cap.linearization is None
  srgb = raw_io.render_srgb(cap)
  assert srgb.shape == (h, w, 3) and srgb.dtype == np.uint8 and 20 < srgb.mean() < 235


def test_gray_world_on_real_mosaic_when_metadata_is_useless(raw_dir):
  cap = read_capture(raw_dir / "nikon_d1_rawsamples.nef")
  gains, src = raw_io.choose_wb([1, 1, 1, 1], [0, 0, 0, 0], cap.mosaic, cap.pattern,
                                cap.black_level, cap.white_level)
  assert src == "gray_world" and gains[1] == 1.0
  assert 0.5 < gains[0] < 4 and 0.5 < gains[2] < 4 and not np.allclose(gains, 1)
