"""DNG writer and photo metadata: rawpy (LibRaw), Pillow, tifffile and exiftool must read
back exactly what was written. Reader-by-reader conformance over every kind of DNG jisp
writes is tests/test_dng_conformance.py."""
import datetime as dt
import json
import os
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import rawpy
import tifffile
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from jisp.core import dng, exif
from jisp.data.raw_io import _bayer_from_colors, read_capture, usable_wb

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
# Canon 550D ColorMatrix1 (XYZ -> camera), a realistic invertible matrix.
CM = np.array([[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534],
               [-0.0416, 0.1540, 0.6039]])
# Canon 550D ColorMatrix2-like (StdA) and a forward matrix (camera -> XYZ D50).
CM_A = np.array([[0.7164, -0.1916, -0.0689], [-0.4410, 1.1853, 0.2779],
                 [-0.0812, 0.1813, 0.6821]])
FM = np.array([[0.7868, 0.0092, 0.1683], [0.2291, 0.8615, -0.0906],
               [0.0027, -0.4752, 1.2976]])
BLACK = (60, 62, 63, 61)  # per site, deliberately all different
WHITE = 4000
NEUTRAL = (0.5, 1.0, 0.7)
EXIFTOOL = shutil.which("exiftool")


def _mosaic(h=64, w=96, seed=0):
  return np.random.default_rng(seed).integers(min(BLACK), WHITE + 1, (h, w)).astype(np.uint16)


def _tags(path, page=0):
  with tifffile.TiffFile(path) as tf:
    p = tf.pages[0] if page == 0 else tf.pages[0].pages[0]
    return {x.code: x.value for x in p.tags.values()}


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
  t = _tags(p)
  assert t[262] == 32803 and t[259] == 1                       # CFA, uncompressed
  assert bytes(t[33422]) == bytes([1, 0, 2, 1])                # G R / B G
  assert int(t[274]) == 6 and t[50708] == "jisp unique"
  assert int(t[50778]) == 21                                   # D65
  assert t[50714] == 64 and 50713 not in t                     # scalar black, no repeat dim
  cm = np.array(t[50721], float).reshape(9, 2)
  np.testing.assert_allclose((cm[:, 0] / cm[:, 1]).reshape(3, 3), CM, atol=1e-6)
  assert t[305] == f"jisp {__import__('jisp').__version__}"    # Software
  assert t[50936] == "jisp unique"                             # ProfileName


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
    (dict(mosaic=np.zeros((20, 96), np.uint16)), r"96x20 is too small .* under 22 pixels"),
    (dict(mosaic=np.zeros((64, 20), np.uint16)), "too small"),
    (dict(pattern="RGBG"), "unknown Bayer pattern 'RGBG'"),
    (dict(black_level=(1, 2, 3)), "black_level"),
    (dict(black_level=5000), "below white_level"),
    (dict(white_level=70000), "white_level"),
    (dict(as_shot_neutral=(0.5, 0, 1)), "as_shot_neutral"),
    (dict(color_matrix=np.eye(4)), "3x3"),
    (dict(color_matrix=np.zeros((3, 3))), "singular"),
    (dict(orientation=9), "orientation"),
    (dict(make=""), "make"),
    (dict(illuminant1=16.5), "illuminant1 must be an EXIF LightSource"),
    (dict(illuminant1=99), "illuminant1"),
    (dict(color_matrix2=CM_A), "color_matrix2 needs illuminant2"),
    (dict(forward_matrix2=FM), "need color_matrix2"),
    (dict(color_matrix2=np.zeros((3, 3)), illuminant2=17), "color_matrix2 is singular"),
    (dict(forward_matrix1=np.ones((2, 3))), "forward_matrix1 must be a finite 3x3"),
    (dict(baseline_exposure=float("nan")), "baseline_exposure"),
    (dict(software="jisp ✓"), "software must be a non-empty ASCII"),
    (dict(preview=np.zeros((8, 8))), r"preview must be an \(H, W, 3\)"),
    (dict(preview=np.zeros((8, 8, 3)), preview_size=0), "preview size"),
    (dict(original_name="a\x00b"), "original_name"),
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


# --------------------------------------------------------------------------- size, mode

def test_smallest_mosaic_libraw_opens(tmp_path):
  """22 px is LibRaw's (and dcraw's) smallest side; the writer refuses anything smaller,
  and a raw image under it written anyway is indeed unreadable."""
  m = _mosaic(dng.MIN_SIDE, dng.MIN_SIDE)
  p = dng.write_dng(tmp_path / "min.dng", m, "RGGB", BLACK, WHITE, NEUTRAL, CM)
  with rawpy.imread(str(p)) as raw:
    assert np.array_equal(raw.raw_image_visible, m)
  small = tmp_path / "small.dng"
  tifffile.imwrite(small, _mosaic(20, 64), photometric=32803, rowsperstrip=20,
                   extratags=dng.dng_tags((20, 64), "RGGB", 64, WHITE, NEUTRAL, CM),
                   metadata=None, software=False)
  with pytest.raises(rawpy.LibRawFileUnsupportedError):
    rawpy.imread(str(small))


def test_files_are_0644_whatever_the_umask(tmp_path):
  old = os.umask(0o077)
  try:
    a = dng.write_dng(tmp_path / "a.dng", _mosaic(), "RGGB", BLACK, WHITE, NEUTRAL, CM)
    b = dng.write_dng(tmp_path / "b.dng", _mosaic(), "RGGB", BLACK, WHITE, NEUTRAL, CM,
                      preview=np.zeros((64, 96, 3)), metadata=exif.PhotoMetadata(source="x"))
  finally:
    os.umask(old)
  assert (a.stat().st_mode & 0o777) == 0o644 and (b.stat().st_mode & 0o777) == 0o644


def test_even_crop_keeps_the_top_left_phase():
  a = np.arange(7 * 9).reshape(7, 9)
  c = dng.even_crop(a)
  assert c.shape == (6, 8) and np.array_equal(c, a[:6, :8])
  rgb = np.zeros((333, 517, 3))
  assert dng.even_crop(rgb).shape == (332, 516, 3)


# --------------------------------------------------------------------------- metadata

R = IFDRational


def _exif_jpeg(path, rgb=None, orientation=1):
  """A JPEG with a photographer's EXIF, made with Pillow (independent of jisp's reader)."""
  if rgb is None:
    rgb = _scene(96, 128)
  e = Image.Exif()
  e[271], e[272], e[274] = "Canon", "Canon EOS R5", orientation
  e[306] = "2024:05:06 07:08:10"
  e[315] = "José Ñandú".encode("utf-8")   # Pillow writes str as ASCII; bytes stay UTF-8
  e[33432] = "(c) 2024 Ann"
  e[270] = "harbour at dawn"
  ex = e.get_ifd(34665)
  ex[33434], ex[33437], ex[34855] = R(1, 250), R(28, 10), 800
  ex[36867], ex[36868] = "2024:05:06 07:08:09", "2024:05:06 07:08:09"
  ex[36881], ex[37521] = "-03:30", "042"
  ex[37380], ex[37386], ex[41989] = R(-2, 3), R(35, 1), 35
  ex[34850], ex[37383], ex[37385], ex[41986], ex[41987] = 3, 5, 16, 0, 1
  ex[42033], ex[42035], ex[42036], ex[42037] = "0123456", "Canon", "RF35mm F1.8 MACRO", "99"
  ex[42034] = (R(35, 1), R(35, 1), R(18, 10), R(18, 10))
  g = e.get_ifd(34853)
  g[0], g[1], g[3], g[5] = b"\x02\x03\x00\x00", "S", "W", b"\x01"
  g[2] = (R(33, 1), R(51, 1), R(5420, 100))
  g[4] = (R(151, 1), R(12, 1), R(3050, 100))
  g[6] = R(125, 10)
  Image.fromarray(_u8(rgb)).save(path, exif=e.tobytes(), quality=95)
  return path


def _u8(rgb):
  return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _scene(h, w):
  """Smooth colourful image with a bright top-left quadrant (shows any flip)."""
  yy, xx = np.mgrid[0:1:h * 1j, 0:1:w * 1j]
  rgb = np.stack([0.2 + 0.5 * xx, 0.2 + 0.5 * yy, 0.5 - 0.3 * xx * yy], -1)
  rgb[: h // 2, : w // 2] += 0.3
  return np.clip(rgb, 0, 1)


EXPECT = dict(
    make="Canon", model="Canon EOS R5", datetime="2024:05:06 07:08:10",
    datetime_original="2024:05:06 07:08:09", datetime_digitized="2024:05:06 07:08:09",
    offset_time_original="-03:30", subsec_time_original="042",
    exposure_time=Fraction(1, 250), f_number=Fraction(14, 5), iso=800,
    exposure_bias=Fraction(-2, 3), focal_length=Fraction(35), focal_length_35mm=35,
    exposure_program=3, metering_mode=5, flash=16, exposure_mode=0, white_balance=1,
    body_serial="0123456", lens_make="Canon", lens_model="RF35mm F1.8 MACRO",
    lens_serial="99", artist="José Ñandú", copyright="(c) 2024 Ann",
    description="harbour at dawn",
    lens_specification=(Fraction(35), Fraction(35), Fraction(9, 5), Fraction(9, 5)))


def _check_record(meta, skip=()):
  for k, v in EXPECT.items():
    if k not in skip:
      assert getattr(meta, k) == v, k
  g = meta.gps
  assert (g.latitude_ref, g.longitude_ref, g.altitude_ref) == ("S", "W", 1)
  assert g.latitude == (33, 51, Fraction(271, 5)) and g.altitude == Fraction(25, 2)
  assert g.lat == pytest.approx(-(33 + 51 / 60 + 54.2 / 3600), abs=1e-12)
  assert g.lon == pytest.approx(-(151 + 12 / 60 + 30.5 / 3600), abs=1e-12)
  assert g.alt == -12.5


def test_reads_a_pillow_made_jpeg(tmp_path):
  meta = exif.read_photo_metadata(_exif_jpeg(tmp_path / "p.jpg", orientation=6))
  assert meta.source == "p.jpg" and meta.orientation == 6 and meta.problems == ()
  _check_record(meta)
  assert meta.captured() == dt.datetime(2024, 5, 6, 7, 8, 9, 42000,
                                        dt.timezone(-dt.timedelta(hours=3, minutes=30)))
  assert meta.camera == "Canon EOS R5"


def test_reads_tiff_and_png_exif(tmp_path):
  src = exif.read_photo_metadata(_exif_jpeg(tmp_path / "p.jpg"))
  with Image.open(tmp_path / "p.jpg") as im:
    blob = im.info["exif"]
    im.save(tmp_path / "p.png", exif=blob)     # eXIf chunk
    im.save(tmp_path / "p.tif", exif=blob)     # tags in the TIFF's own IFD0
  # Pillow's TIFF writer stores non-ASCII text as '?', so the TIFF's Artist differs.
  for name, skip in (("p.png", ()), ("p.tif", ("artist",))):
    meta = exif.read_photo_metadata(tmp_path / name)
    assert meta.problems == (), name
    assert dataclasses_equal(meta, src, skip=("source",) + skip), name
    assert meta.source == name


def dataclasses_equal(a, b, skip=()):
  import dataclasses
  return all(getattr(a, f.name) == getattr(b, f.name)
             for f in dataclasses.fields(a) if f.name not in skip)


def test_reads_tiff_that_pillow_cannot_decode(tmp_path):
  """A 16-bit RGB TIFF (Pillow has no such mode) still gives its IFD0 tags."""
  p = tmp_path / "w.tif"
  tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint16), photometric="rgb",
                   extratags=[(315, "s", 0, "Ann", True), (274, "H", 1, 8, True)],
                   metadata=None)
  meta = exif.read_photo_metadata(p)
  assert meta.artist == "Ann" and meta.orientation == 8


def test_no_or_bad_exif(tmp_path):
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "plain.png")
  meta = exif.read_photo_metadata(tmp_path / "plain.png")
  assert meta == exif.PhotoMetadata(source="plain.png")
  e = Image.Exif()
  e[274] = 12
  ex = e.get_ifd(34665)
  ex[36867] = "2023:02:30 10:00:00"                  # no such day
  ex[33434] = R(1, 0)                                # zero denominator
  ex[37386] = R(-5, 1)                               # negative focal length
  ex[36881] = "UTC"
  ex[34855] = 200                                    # fine: kept
  g = e.get_ifd(34853)
  g[1], g[2], g[3], g[4] = "X", (R(1), R(2), R(3)), "E", (R(1), R(2), R(3))
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "bad.jpg", exif=e.tobytes())
  meta = exif.read_photo_metadata(tmp_path / "bad.jpg")
  assert meta.iso == 200 and meta.orientation == 1
  assert (meta.datetime_original, meta.exposure_time, meta.focal_length, meta.gps,
          meta.offset_time_original) == (None,) * 5
  names = sorted(p.split(":")[0] for p in meta.problems)
  assert names == ["DatetimeOriginal", "ExposureTime", "FocalLength", "GPS",
                   "OffsetTimeOriginal", "Orientation"]
  with pytest.raises(exif.InputError, match="nope.jpg: no such file"):
    exif.read_photo_metadata(tmp_path / "nope.jpg")
  (tmp_path / "junk.jpg").write_bytes(b"not an image")
  junk = exif.read_photo_metadata(tmp_path / "junk.jpg")
  assert junk.make is None and junk.problems and "unreadable" in junk.problems[0]


def _full_dng(tmp_path, meta, rgb, **kw):
  h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
  args = dict(metadata=meta, profile_camera="Canon EOS 550D", preview=rgb[:h, :w],
              software="jisp 0.1.0 (run ddpm, step 12)", baseline_exposure=-0.25,
              illuminant1=17, color_matrix2=CM, illuminant2=21, forward_matrix1=FM,
              forward_matrix2=FM)
  args.update(kw)
  return dng.write_dng(tmp_path / "full.dng", _mosaic(h, w), "RGGB", BLACK, WHITE, NEUTRAL,
                       CM_A, **args)


def test_metadata_survives_into_the_dng(tmp_path):
  src = _exif_jpeg(tmp_path / "IMG_0001.jpg")
  meta = exif.read_photo_metadata(src)
  p = _full_dng(tmp_path, meta, _scene(96, 128))

  # jisp's own reader (Pillow) on the DNG: the same record, camera names per policy.
  back = exif.read_photo_metadata(p)
  assert back.problems == ()
  _check_record(back, skip=("model",))
  assert back.model == "Canon EOS R5 (jisp)" and back.software.startswith("jisp 0.1.0")

  # tifffile: the EXIF and GPS IFDs hang off IFD0, the raw is IFD0's SubIFD.
  with tifffile.TiffFile(p) as tf:
    ifd0 = tf.pages[0]
    ex, gps = ifd0.tags["ExifTag"].value, ifd0.tags["GPSTag"].value
    assert ex["ExposureTime"] == (1, 250) and ex["FNumber"] == (14, 5)
    assert ex["DateTimeOriginal"] == "2024:05:06 07:08:09" and ex["ExifVersion"] == "0232"
    assert ex["LensModel"] == "RF35mm F1.8 MACRO"
    assert gps["GPSLatitudeRef"] == "S" and gps["GPSAltitudeRef"] == 1
    t = {x.code: x.value for x in ifd0.tags.values()}
    assert t[50827] == "IMG_0001.jpg" and t[50708] == "jisp Canon EOS 550D"
    assert t[271] == "Canon" and t[272] == "Canon EOS R5 (jisp)"
    assert (int(t[50778]), int(t[50779])) == (17, 21)
    assert t[50730] == (-250000, 1_000_000)
    fm = np.array(t[50964], float).reshape(9, 2)
    np.testing.assert_allclose((fm[:, 0] / fm[:, 1]).reshape(3, 3), FM, atol=1e-6)

  # LibRaw reads the exposure, time, lens and artist from the EXIF IFD.
  with rawpy.imread(str(p)) as raw:
    o, lens = raw.other, raw.lens
    assert (o.iso_speed, o.aperture, o.focal_length) == pytest.approx((800, 2.8, 35))
    assert o.shutter_speed == pytest.approx(1 / 250)
    assert o.timestamp == dt.datetime(2024, 5, 6, 7, 8, 9)
    assert o.artist == "José Ñandú"
    assert (lens.make, lens.model) == ("Canon", "RF35mm F1.8 MACRO")
    assert (lens.min_focal, lens.max_focal) == pytest.approx((35, 35))


@pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed "
                    "(Debian package libimage-exiftool-perl)")
def test_exiftool_reads_the_same_metadata(tmp_path):
  meta = exif.read_photo_metadata(_exif_jpeg(tmp_path / "IMG_0001.jpg"))
  p = _full_dng(tmp_path, meta, _scene(96, 128))
  out = subprocess.run([EXIFTOOL, "-j", "-n", "-a", "-G1", str(p),
                        str(tmp_path / "IMG_0001.jpg")], capture_output=True, text=True,
                       check=True)
  got, src = json.loads(out.stdout)
  for key in ("IFD0:Make", "IFD0:ModifyDate", "IFD0:Artist", "IFD0:Copyright",
              "IFD0:ImageDescription", "ExifIFD:ExposureTime", "ExifIFD:FNumber",
              "ExifIFD:ISO", "ExifIFD:DateTimeOriginal", "ExifIFD:CreateDate",
              "ExifIFD:OffsetTimeOriginal", "ExifIFD:SubSecTimeOriginal",
              "ExifIFD:ExposureCompensation", "ExifIFD:FocalLength",
              "ExifIFD:FocalLengthIn35mmFormat", "ExifIFD:ExposureProgram",
              "ExifIFD:MeteringMode", "ExifIFD:Flash", "ExifIFD:ExposureMode",
              "ExifIFD:WhiteBalance", "ExifIFD:SerialNumber", "ExifIFD:LensInfo",
              "ExifIFD:LensMake", "ExifIFD:LensModel", "ExifIFD:LensSerialNumber",
              "GPS:GPSLatitudeRef", "GPS:GPSLatitude", "GPS:GPSLongitudeRef",
              "GPS:GPSLongitude", "GPS:GPSAltitudeRef", "GPS:GPSAltitude",
              "Composite:GPSLatitude", "Composite:GPSLongitude",
              "Composite:SubSecDateTimeOriginal"):
    assert key in src, key
    assert got.get(key) == src[key], key
  assert got["IFD0:Model"] == "Canon EOS R5 (jisp)"
  assert got["IFD0:OriginalRawFileName"] == "IMG_0001.jpg"
  assert got["IFD0:Software"] == "jisp 0.1.0 (run ddpm, step 12)"
  assert got["IFD0:ProfileName"] == "jisp Canon EOS 550D"
  assert got["IFD0:UniqueCameraModel"] == "jisp Canon EOS 550D"
  assert got["IFD0:BaselineExposure"] == -0.25
  assert (got["IFD0:CalibrationIlluminant1"], got["IFD0:CalibrationIlluminant2"]) == (17, 21)
  np.testing.assert_allclose(np.array(got["IFD0:ForwardMatrix2"].split(), float),
                             FM.reshape(-1), atol=1e-6)
  np.testing.assert_allclose(np.array(got["IFD0:ColorMatrix2"].split(), float),
                             CM.reshape(-1), atol=1e-6)
  assert got["IFD0:PreviewColorSpace"] == 2 and got["SubIFD:SubfileType"] == 0
  v = subprocess.run([EXIFTOOL, "-validate", "-warning", "-error", "-a", "-j", str(p)],
                     capture_output=True, text=True, check=True)
  report = json.loads(v.stdout)[0]
  assert report.get("Validate") == "OK", report


def test_orientation_is_dngs_not_the_sources(tmp_path):
  """The source's EXIF orientation describes its pixels; the DNG's Orientation describes
  the mosaic, so only write_dng's `orientation` lands in IFD0."""
  meta = exif.read_photo_metadata(_exif_jpeg(tmp_path / "o.jpg", orientation=6))
  p = dng.write_dng(tmp_path / "o.dng", _mosaic(), "RGGB", BLACK, WHITE, NEUTRAL, CM,
                    metadata=meta)
  assert int(_tags(p)[274]) == 1
  with rawpy.imread(str(p)) as raw:
    assert raw.sizes.flip == 0


def test_non_ascii_names_go_in_as_utf8(tmp_path):
  p = dng.write_dng(tmp_path / "n.dng", _mosaic(), "RGGB", BLACK, WHITE, NEUTRAL, CM,
                    original_name="Überfahrt_01.jpg", profile_name="jisp Ü")
  t = _tags(p)
  assert bytes(t[50827]).rstrip(b"\0").decode("utf-8") == "Überfahrt_01.jpg"
  assert bytes(t[50936]).rstrip(b"\0").decode("utf-8") == "jisp Ü"


def test_camera_names_policy():
  meta = exif.PhotoMetadata(make="NIKON CORPORATION", model="NIKON Z 6")
  assert dng.camera_names(meta, "Canon EOS 550D") == {
      "make": "NIKON CORPORATION", "model": "NIKON Z 6 (jisp)",
      "unique_model": "jisp Canon EOS 550D"}
  assert dng.camera_names(None, "Canon EOS 550D") == {
      "make": "jisp", "model": "Canon EOS 550D", "unique_model": "jisp Canon EOS 550D"}
  assert dng.camera_names() == {"make": "jisp", "model": "jisp", "unique_model": "jisp jisp"}
  odd = exif.PhotoMetadata(make="Lëica", model="M ✓")
  assert dng.camera_names(odd)["make"] == "L?ica"


# --------------------------------------------------------------------------- preview

def test_preview_decodes_and_matches_the_input(tmp_path):
  rgb = _scene(300, 402)
  p = dng.write_dng(tmp_path / "p.dng", _mosaic(300, 402), "GBRG", BLACK, WHITE, NEUTRAL,
                    CM, preview=rgb)
  expect = dng.make_preview(rgb)
  assert expect.shape == (191, 256, 3)                # long side 256, aspect kept
  with tifffile.TiffFile(p) as tf:                    # IFD0 = preview, SubIFD = raw
    ifd0, sub = tf.pages[0], tf.pages[0].pages[0]
    assert int(ifd0.tags[254].value) == 1 and ifd0.photometric == 2
    assert np.array_equal(ifd0.asarray(), expect)
    assert int(sub.tags[254].value) == 0 and sub.photometric == 32803
    assert np.array_equal(sub.asarray(), _mosaic(300, 402))
  with Image.open(p) as im:                           # what image viewers show
    assert np.array_equal(np.asarray(im.convert("RGB")), expect)
  with rawpy.imread(str(p)) as raw:                   # LibRaw's embedded thumbnail
    thumb = raw.extract_thumb()
    assert thumb.format == rawpy.ThumbFormat.BITMAP
    assert np.array_equal(thumb.data, expect)
    assert np.array_equal(raw.raw_image_visible, _mosaic(300, 402))
  cap = read_capture(p)                               # what prepare / eval / --like see
  assert np.array_equal(cap.mosaic, _mosaic(300, 402)) and cap.pattern == "GBRG"
  assert cap.black_level.tolist() == list(BLACK) and cap.wb_source == "camera"
  np.testing.assert_allclose(cap.color_matrix, CM, atol=1e-6)
  # and it is the input, downscaled: block means of the input agree closely
  small = np.asarray(Image.fromarray(_u8(rgb)).resize((256, 191), Image.Resampling.BOX))
  assert np.abs(expect.astype(int) - small).mean() < 1.0
  assert np.abs(expect.astype(int) - small).max() <= 20   # Lanczos ringing at the edge


def test_preview_is_never_enlarged_and_takes_8_and_16_bit():
  rgb = _u8(_scene(40, 30))
  assert np.array_equal(dng.make_preview(rgb), rgb)
  assert dng.make_preview(rgb, 10).shape == (10, 8, 3)
  assert np.array_equal(dng.make_preview(rgb.astype(np.uint16) * 257), rgb)
  assert np.array_equal(dng.make_preview(rgb / 255.0), rgb)
  x = np.array([[[np.nan, -np.inf, np.inf]]], np.float32)
  assert dng.make_preview(x).tolist() == [[[0, 0, 255]]]
  with pytest.raises(ValueError, match="preview must be float in"):
    dng.make_preview(rgb.astype(np.int32))
