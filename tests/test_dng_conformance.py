"""Conformance: every kind of DNG jisp writes, opened by every RAW reader on the machine.

The matrix: the four Bayer layouts with and without a linearization table and with and
without a preview (raw in IFD0 / raw in a SubIFD), every orientation 1..8, odd-sized
inputs cropped with dng.even_crop, the smallest size LibRaw opens, one file with every
optional tag and the photo's metadata, and one 12-MP file. Readers: LibRaw (rawpy) always;
dcraw, RawTherapee (rawtherapee-cli) and exiftool -validate when installed (Debian
packages dcraw, rawtherapee, libimage-exiftool-perl; .ci/run installs them), else those
tests skip saying so. Where a reader reports the mosaic (rawpy raw_image_visible, dcraw -D)
it must be the written one, bit for bit; every reader must render with no warning or error.

All files are written once per module and each external tool runs once over all of them.
"""
import dataclasses
import json
import os
import re
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import rawpy
import tifffile

from jisp.core import dng, exif
from jisp.core.images import apply_orientation
from jisp.data.raw_io import exif_orientation

CM = np.array([[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534],
               [-0.0416, 0.1540, 0.6039]])
CM_A = np.array([[0.7164, -0.1916, -0.0689], [-0.4410, 1.1853, 0.2779],
                 [-0.0812, 0.1813, 0.6821]])
FM = np.array([[0.7868, 0.0092, 0.1683], [0.2291, 0.8615, -0.0906],
               [0.0027, -0.4752, 1.2976]])
BLACK, WHITE = (60, 62, 63, 61), 4000
NEUTRAL = (0.5, 1.0, 0.7)
# RawTherapee 5.9 takes any file under 100 000 bytes for no raw (rtengine/dcraw.cc).
RT_MIN_BYTES = 100_000

DCRAW, RT, EXIFTOOL = (shutil.which(x) for x in ("dcraw", "rawtherapee-cli", "exiftool"))
NEED = {"dcraw": DCRAW, "rawtherapee-cli": RT, "exiftool": EXIFTOOL}


def _need(tool):
  if NEED[tool] is None:
    pytest.skip(f"{tool} not installed (apt-get install dcraw rawtherapee "
                "libimage-exiftool-perl, as .ci/run does)")


@dataclasses.dataclass
class Case:
  name: str
  h: int                    # source image size; the mosaic is its even crop
  w: int
  pattern: str = "RGGB"
  orientation: int = 1
  lin: bool = False
  preview: bool = True
  full: bool = False        # every optional tag + the photo's metadata


def _cases():
  out = []
  for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
    for lin in (False, True):
      for preview in (False, True):
        out.append(Case(f"{pattern}_{'lin' if lin else 'plain'}_{'prev' if preview else 'ifd0'}",
                        232, 240, pattern, lin=lin, preview=preview))
  for o in range(1, 9):  # non-square, so a swapped width/height shows
    out.append(Case(f"orient{o}", 216, 264, ("RGGB", "BGGR", "GRBG", "GBRG")[o % 4], o,
                    lin=o % 2 == 0))
  out += [Case("odd_333x517", 333, 517, "GBRG", 6), Case("odd_241x449", 241, 449, "BGGR"),
          Case("min_23x23", 23, 23, "GRBG"), Case("full", 251, 331, "RGGB", 3, True, True, True),
          Case("full_ifd0", 240, 232, "GBRG", 8, True, False, True),
          Case("mp12", 3000, 4000, "RGGB", 1, False, True, True)]
  return out


CASES = _cases()


def _scene(h, w):
  """Smooth colours with a much brighter top-left quadrant (shows any flip)."""
  yy, xx = np.mgrid[0:1:h * 1j, 0:1:w * 1j].astype(np.float32)
  rgb = np.stack([0.1 + 0.3 * xx, 0.1 + 0.3 * yy, 0.3 - 0.2 * xx * yy], -1)
  rgb[: h // 2, : w // 2] += 0.5
  return rgb


def _cfa(rgb, pattern):
  h, w = rgb.shape[:2]
  out = np.empty((h, w), np.float32)
  for k, ch in enumerate(pattern):
    out[k // 2::2, k % 2::2] = rgb[k // 2::2, k % 2::2, "RGB".index(ch)]
  return out


@dataclasses.dataclass
class Written:
  case: Case
  path: str
  linear: np.ndarray        # what a reader must report (linearization applied)
  scene: np.ndarray         # the even-cropped source, stored orientation


def _write(case, folder):
  scene = dng.even_crop(_scene(case.h, case.w))
  h, w = scene.shape[:2]
  rng = np.random.default_rng(len(case.name))
  site_black = np.tile(np.array(BLACK, np.float32).reshape(2, 2), (h // 2, w // 2))
  x = np.clip(_cfa(scene, case.pattern) + rng.normal(0, 0.01, (h, w)).astype(np.float32),
              0, 1)
  kw = {}
  if case.lin:  # stored 8-bit codes through a square-law table onto [0, white]
    lut = np.round(np.linspace(0, 1, 256) ** 2 * WHITE).astype(np.uint16)
    stored = np.round(np.sqrt(0.1 + 0.85 * x) * 255).astype(np.uint16)
    kw["linearization"], linear = lut, lut[stored]
  else:
    stored = np.round(site_black + x * 0.9 * (WHITE - site_black)).astype(np.uint16)
    linear = stored
  if case.preview:
    kw["preview"] = scene
  if case.full:
    meta = exif.PhotoMetadata(
        source=f"{case.name}.jpg", make="Canon", model="Canon EOS 5D Mark IV",
        datetime_original="2024:05:06 07:08:09", offset_time_original="+02:00",
        exposure_time=Fraction(1, 125), f_number=Fraction(4), iso=200,
        focal_length=Fraction(24), lens_model="EF24-70mm f/2.8L II USM",
        artist="Ann", copyright="(c) Ann",
        gps=exif.GPS((Fraction(48), Fraction(51), Fraction(2994, 100)), "N",
                     (Fraction(2), Fraction(17), Fraction(4005, 100)), "E",
                     Fraction(35)))
    kw.update(metadata=meta, profile_camera="Canon EOS 550D", baseline_exposure=0.35,
              illuminant1=17, color_matrix2=CM, illuminant2=21, forward_matrix1=FM,
              forward_matrix2=FM, software="jisp test (run conformance)")
  path = dng.write_dng(folder / f"{case.name}.dng", stored, case.pattern, BLACK, WHITE,
                       NEUTRAL, CM_A if case.full else CM, case.orientation, **kw)
  return Written(case, str(path), linear, scene)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dngs")
  return {c.name: _write(c, folder) for c in CASES}


def _quadrant(img) -> int:
  """Index (row-major) of the brightest quadrant of an (H, W[, C]) image."""
  a = np.asarray(img, np.float64)
  a = a.mean(-1) if a.ndim == 3 else a
  h, w = a.shape[0] // 2, a.shape[1] // 2
  return int(np.argmax([a[:h, :w].mean(), a[:h, w:].mean(), a[h:, :w].mean(),
                        a[h:, w:].mean()]))


def _expected_quadrant(wr) -> int:
  return _quadrant(apply_orientation(wr.scene, wr.case.orientation))


# --------------------------------------------------------------------------- LibRaw

@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_libraw(written, name):
  wr = written[name]
  with rawpy.imread(wr.path) as raw:
    assert np.array_equal(raw.raw_image_visible, wr.linear)
    colors = raw.raw_colors_visible[:2, :2].reshape(-1)
    assert "".join(raw.color_desc.decode()[c] for c in colors) == wr.case.pattern
    blpc = raw.black_level_per_channel
    assert [blpc[c] for c in colors] == list(BLACK)
    assert raw.white_level == WHITE
    assert exif_orientation(raw.sizes.flip) == wr.case.orientation
    if wr.case.preview:
      thumb = raw.extract_thumb()
      assert thumb.format == rawpy.ThumbFormat.BITMAP
      assert np.array_equal(thumb.data, dng.make_preview(wr.scene))
    rgb = raw.postprocess(no_auto_bright=True, use_camera_wb=True, half_size=True,
                          demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR)
  oriented = apply_orientation(wr.linear, wr.case.orientation)
  assert rgb.shape[:2] == (oriented.shape[0] // 2, oriented.shape[1] // 2)
  assert _quadrant(rgb) == _expected_quadrant(wr)


def test_matrix_covers_what_jisp_writes():
  assert {c.pattern for c in CASES} == {"RGGB", "BGGR", "GRBG", "GBRG"}
  assert {c.orientation for c in CASES} == set(range(1, 9))
  assert {(c.lin, c.preview) for c in CASES} == {(a, b) for a in (0, 1) for b in (0, 1)}
  assert any(c.h % 2 and c.w % 2 for c in CASES)
  assert any(c.h * c.w >= 12_000_000 for c in CASES)
  assert any(dng.even_crop(np.zeros((c.h, c.w))).shape == (dng.MIN_SIDE,) * 2 for c in CASES)


def test_odd_sizes_are_cropped_even(written):
  assert written["odd_333x517"].linear.shape == (332, 516)
  assert written["min_23x23"].linear.shape == (22, 22)


# --------------------------------------------------------------------------- dcraw

@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_dcraw(written, name, tmp_path):
  _need("dcraw")
  wr = written[name]
  # -D: the raw values, no scaling; -4: 16-bit linear; dcraw applies the orientation.
  d = subprocess.run([DCRAW, "-D", "-4", "-T", "-c", wr.path], capture_output=True,
                     timeout=120)
  assert d.returncode == 0 and d.stderr == b"", d.stderr
  (tmp_path / "d.tiff").write_bytes(d.stdout)
  got = tifffile.imread(tmp_path / "d.tiff")
  assert np.array_equal(got, apply_orientation(wr.linear, wr.case.orientation))
  # a rendering: camera white balance, bilinear; no warning on stderr
  r = subprocess.run([DCRAW, "-w", "-q", "0", "-T", "-c", wr.path], capture_output=True,
                     timeout=120)
  assert r.returncode == 0 and r.stderr == b"", r.stderr
  (tmp_path / "r.tiff").write_bytes(r.stdout)
  rgb = tifffile.imread(tmp_path / "r.tiff")
  assert rgb.shape[:2] == got.shape and rgb.std() > 0
  assert _quadrant(rgb) == _expected_quadrant(wr)


# --------------------------------------------------------------------------- RawTherapee

# RawTherapee 5.9 turns only rotations into its coarse rotation (rtengine/rawimage.cc maps
# dcraw flips 3/5/6 to 180/270/90 degrees): the mirrored EXIF orientations 2, 4, 5, 7 are
# shown unturned. jisp writes them only when asked; reconstructions are upright (1).
RT_SHOWS = {1: 1, 2: 1, 3: 3, 4: 1, 5: 1, 6: 6, 7: 1, 8: 8}
_RT_LINE = re.compile(r"^(RawTherapee, version [\d.]+, command line\.|Output is 16-bit "
                      r"integer\.|Processing: .*\.dng)$")


@pytest.fixture(scope="module")
def rt_output(written, tmp_path_factory):
  """One rawtherapee-cli run over every file it accepts: (output folder, its messages)."""
  if RT is None:
    return None
  out = tmp_path_factory.mktemp("rt")
  home = tmp_path_factory.mktemp("rt_home")  # RT keeps its settings and cache in $HOME
  files = [wr.path for wr in written.values() if os.path.getsize(wr.path) >= RT_MIN_BYTES]
  env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
             XDG_CACHE_HOME=str(home / "cache"))
  p = subprocess.run([RT, "-q", "-Y", "-t", "-b16", "-o", str(out), "-c", *files],
                     capture_output=True, text=True, timeout=600, env=env)
  return out, p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_rawtherapee(written, rt_output, name):
  _need("rawtherapee-cli")
  wr = written[name]
  if os.path.getsize(wr.path) < RT_MIN_BYTES:
    pytest.skip(f"{os.path.getsize(wr.path)} bytes: RawTherapee 5.9 opens no file under "
                f"{RT_MIN_BYTES} bytes (rtengine/dcraw.cc)")
  out, rc, messages = rt_output
  bad = [ln for ln in messages.splitlines() if ln.strip() and not _RT_LINE.match(ln.strip())]
  assert rc == 0 and not bad, bad
  rgb = tifffile.imread(out / (os.path.basename(wr.path)[:-4] + ".tif"))
  shown = RT_SHOWS[wr.case.orientation]
  oriented = apply_orientation(wr.linear, shown)
  # RawTherapee leaves out a few border pixels of the demosaic
  assert all(0 <= a - b <= 8 for a, b in zip(oriented.shape, rgb.shape[:2])), rgb.shape
  assert rgb.dtype == np.uint16 and rgb.std() > 0
  assert _quadrant(rgb) == _quadrant(apply_orientation(wr.scene, shown))


# --------------------------------------------------------------------------- exiftool

@pytest.fixture(scope="module")
def exiftool_reports(written):
  if EXIFTOOL is None:
    return None
  paths = [wr.path for wr in written.values()]
  p = subprocess.run([EXIFTOOL, "-validate", "-warning", "-error", "-a", "-j", *paths],
                     capture_output=True, text=True, timeout=300)
  return {os.path.basename(r["SourceFile"]): r for r in json.loads(p.stdout)}


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_exiftool_validate(written, exiftool_reports, name):
  _need("exiftool")
  report = exiftool_reports[os.path.basename(written[name].path)]
  assert report.get("Validate") == "OK", report
  assert not {k for k in report if k.startswith(("Warning", "Error"))}, report


# --------------------------------------------------------------------------- camera names

def test_source_camera_names_change_no_reader(tmp_path):
  """Make/Model of a real camera RawTherapee knows (its camconst.json crops the Canon EOS
  5D Mark IV's sensor borders and reads black from its masked areas) would break its
  render; camera_names' "(jisp)" model renders exactly like a neutral name everywhere."""
  scene = _scene(240, 320)
  m = np.round(np.array(BLACK).mean() + _cfa(scene, "RGGB") * 3000).astype(np.uint16)
  meta = exif.PhotoMetadata(make="Canon", model="Canon EOS 5D Mark IV")
  paths = {}
  for key, names in (("neutral", dict(make="jisp", model="jisp")),
                     ("source", dng.camera_names(meta, "Canon EOS 550D"))):
    paths[key] = str(dng.write_dng(tmp_path / f"{key}.dng", m, "RGGB", BLACK, WHITE,
                                   NEUTRAL, CM, preview=scene, **names))
  renders = {}
  for key, p in paths.items():
    with rawpy.imread(p) as raw:
      renders[key] = raw.postprocess(no_auto_bright=True, use_camera_wb=True)
  assert np.array_equal(renders["neutral"], renders["source"])
  if RT is None:
    pytest.skip("rawtherapee-cli not installed: LibRaw part checked only")
  env = dict(os.environ, HOME=str(tmp_path / "home"))
  out = tmp_path / "rt"
  out.mkdir()
  subprocess.run([RT, "-q", "-Y", "-t", "-b16", "-o", str(out), "-c", *paths.values()],
                 capture_output=True, timeout=300, env=env, check=True)
  a, b = (tifffile.imread(out / f"{k}.tif") for k in ("neutral", "source"))
  assert np.array_equal(a, b)
