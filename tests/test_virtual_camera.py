"""The offline virtual camera (jisp.data.virtual_camera): captures and DNG folders."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from jisp.data import virtual_camera as vc
from jisp.isp import bayer
from jisp.isp import unprocess as up


@pytest.fixture(scope="module")
def photo():
  # A small, odd-sized crop so the even-crop path runs; keeps every test fast.
  return vc.load_source_image("coffee")[101:166, 203:280]


def test_sources_load_offline():
  names = vc.list_source_images()
  assert len(names) >= 4
  for n in names:
    img = vc.load_source_image(n)
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.05
  with pytest.raises(ValueError, match="nope"):
    vc.load_source_image("nope")


def test_import_is_light():
  code = ("import sys, jisp.data.virtual_camera; "
          "bad = [m for m in ('tensorflow', 'rawpy', 'skimage') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu"})


def test_capture_fields_and_ranges(photo):
  cap = vc.synthesize_capture(photo, 7)
  m = cap["mosaic"]
  assert m.dtype == np.uint16 and m.shape == (64, 76)
  assert cap["pattern"] in bayer.PATTERNS and cap["bits"] in (12, 14)
  assert cap["white_level"] == 2 ** cap["bits"] - 1
  black = cap["black_level"]
  assert 64 << (cap["bits"] - 12) <= black <= 512 << (cap["bits"] - 12)
  assert m.min() >= black and m.max() <= cap["white_level"]
  # Real dynamic range is used, not a handful of codes.
  assert m.max() - m.min() > 0.3 * (cap["white_level"] - black)
  p = cap["camera_params"]
  np.testing.assert_allclose(cap["as_shot_neutral"], 1.0 / np.asarray(p.wb_gains), rtol=1e-6)
  assert cap["as_shot_neutral"][1] == 1.0
  # ColorMatrix maps XYZ -> camera: XYZ of an sRGB colour lands on rgb2cam of that colour,
  # so D65 white (sRGB 1,1,1) maps to camera (1,1,1).
  rgb = np.array([0.2, 0.5, 0.7])
  np.testing.assert_allclose(cap["color_matrix"] @ (up.RGB2XYZ @ rgb),
                             np.asarray(p.rgb2cam, np.float64) @ rgb, atol=1e-6)
  np.testing.assert_allclose(cap["color_matrix"] @ (up.RGB2XYZ @ np.ones(3)), 1.0, atol=1e-5)
  # The mosaic is the noisy, quantised CFA sampling of `linear`.
  clean = np.asarray(bayer.mosaic(cap["linear"], cap["pattern"]))
  codes = (m.astype(np.float64) - black) / (cap["white_level"] - black)
  resid = codes - clean
  inside = (clean > 0.05) & (clean < 0.9)
  sigma = np.sqrt(float(p.shot_noise) * clean + float(p.read_noise))
  z = resid[inside] / np.maximum(sigma[inside], 0.5 / (cap["white_level"] - black))
  assert abs(z.mean()) < 0.1 and 0.8 < z.std() < 1.2


def test_capture_deterministic_and_seed_dependent(photo):
  a = vc.synthesize_capture(photo, 11)
  b = vc.synthesize_capture(photo, 11)
  np.testing.assert_array_equal(a["mosaic"], b["mosaic"])
  np.testing.assert_array_equal(a["color_matrix"], b["color_matrix"])
  assert (a["pattern"], a["black_level"], a["bits"]) == (b["pattern"], b["black_level"], b["bits"])
  caps = [vc.synthesize_capture(photo, s) for s in range(12, 20)]
  gains = np.array([np.asarray(c["camera_params"].wb_gains) for c in caps])
  assert len(np.unique(gains[:, 0])) == len(caps)
  assert len({c["pattern"] for c in caps}) > 1 and len({c["bits"] for c in caps}) == 2
  assert len({c["black_level"] for c in caps}) > 1
  # A jax key works too, and fixing the layout does not change the camera drawn.
  k = jax.random.key(5)
  c1 = vc.synthesize_capture(photo, k, pattern="GBRG", bits=12)
  c2 = vc.synthesize_capture(photo, k)
  assert c1["pattern"] == "GBRG" and c1["bits"] == 12
  np.testing.assert_array_equal(c1["color_matrix"], c2["color_matrix"])


def test_capture_rejects_bad_input(photo):
  with pytest.raises(ValueError, match="bits"):
    vc.synthesize_capture(photo, 0, bits=16)
  with pytest.raises(ValueError, match="pattern"):
    vc.synthesize_capture(photo, 0, pattern="RGBX")
  with pytest.raises(ValueError, match="shape"):
    vc.synthesize_capture(photo[..., 0], 0)


def test_virtual_capture_size_and_repeats():
  n = len(vc.list_source_images())
  name0, c0 = vc.virtual_capture(0, 3, size=(48, 64))
  name_rep, c_rep = vc.virtual_capture(n, 3, size=(48, 64))
  assert name0 == name_rep == vc.list_source_images()[0]
  assert c0["mosaic"].shape == c_rep["mosaic"].shape == (48, 64)
  assert not np.array_equal(c0["linear"], c_rep["linear"])
  _, again = vc.virtual_capture(0, 3, size=(48, 64))
  np.testing.assert_array_equal(again["mosaic"], c0["mosaic"])


def test_write_virtual_raw_dir_reads_back(tmp_path):
  rawpy = pytest.importorskip("rawpy")
  paths = vc.write_virtual_raw_dir(tmp_path / "a", 3, seed=4, size=(48, 64))
  assert [p.name for p in paths] == [f"virtual_{i:04d}_{n}.dng"
                                     for i, n in enumerate(vc.list_source_images()[:3])]
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in paths]
  for i, path in enumerate(paths):
    _, cap = vc.virtual_capture(i, 4, size=(48, 64))
    p = cap["camera_params"]
    with rawpy.imread(str(path)) as r:
      np.testing.assert_array_equal(r.raw_image_visible, cap["mosaic"])
      got = "".join("RGBG"[c] for c in r.raw_pattern.reshape(-1))
      assert got == cap["pattern"]
      assert r.black_level_per_channel == [cap["black_level"]] * 4
      assert r.white_level == cap["white_level"]
      np.testing.assert_allclose(r.camera_whitebalance[:3], np.asarray(p.wb_gains), rtol=1e-5)
      # LibRaw derives its camera->sRGB matrix from ColorMatrix1: it must be our cam2rgb,
      # i.e. a LibRaw render of the file is `process` of the capture (up to demosaic/tone).
      np.testing.assert_allclose(r.color_matrix[:, :3], np.asarray(p.cam2rgb), atol=1e-4)
  # Same seed -> byte-identical files; another seed -> different captures.
  again = vc.write_virtual_raw_dir(tmp_path / "b", 3, seed=4, size=(48, 64))
  for p1, p2 in zip(paths, again):
    assert p1.read_bytes() == p2.read_bytes()
  other = vc.write_virtual_raw_dir(tmp_path / "c", 1, seed=5, size=(48, 64))
  assert other[0].read_bytes() != paths[0].read_bytes()
