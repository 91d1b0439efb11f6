"""Virtual-camera pairs on the fly: determinism, exact resume, the mixed source, agreement
with the real pairs' code (pairs.make_pair, raw_io) and with LibRaw's render."""
import numpy as np
import pytest

from jisp.core.camera import camera_features
from jisp.core.errors import ConfigError
from jisp.data import pairs, raw_io
from jisp.data import prepare as prep
from jisp.data import virtual_pairs as vp
from jisp.data.pipeline import ShardSource

PATCH = 16


def _src(**kw):
  args = dict(patch_size=PATCH, local_batch=4, seed=3, camera=True)
  args.update(kw)
  return vp.VirtualPairSource(**args)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  from jisp.data import virtual_camera
  root = tmp_path_factory.mktemp("mixed")
  virtual_camera.write_virtual_raw_dir(root / "raw", 3, seed=4, size=64)
  prep.prepare(root / "raw", root / "out", patch=32, stride=32, split=1.0, shards=2,
               workers=1, progress=False)
  return root / "out"


def _equal(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_are_a_pure_function_of_their_index():
  a, b = _src(), _src()
  first = a.next()
  assert {k: v.shape for k, v in first.items()} == {
      "rgb": (4, PATCH, PATCH, 3), "raw": (4, PATCH, PATCH, 3), "rgb2cam": (4, 3, 3),
      "wb": (4, 3)}
  for k in ("rgb", "raw"):
    assert first[k].dtype == np.float32 and 0.0 <= first[k].min() and first[k].max() <= 1.0
  _equal(first, b.batch_at(0))
  second = a.next()
  assert not np.array_equal(first["raw"], second["raw"])
  # every example is its own camera
  assert len({tuple(np.round(m.ravel(), 5)) for m in first["rgb2cam"]}) == 4
  # other seeds and the test split are other streams
  assert not np.array_equal(_src(seed=4).batch_at(0)["raw"], first["raw"])
  assert not np.array_equal(_src(split="test").batch_at(0)["raw"], first["raw"])
  # process shares partition the global batch
  parts = [_src(local_batch=2, process_index=i, process_count=2).batch_at(1) for i in (0, 1)]
  _equal({k: np.concatenate([p[k] for p in parts]) for k in second}, second)


def test_resume_replays_the_same_batches():
  a = _src()
  for _ in range(3):
    a.next()
  state = a.get_state()
  expected = [a.next() for _ in range(2)]
  b = _src()
  b.set_state(state)
  for e in expected:
    _equal(b.next(), e)
  assert "rgb2cam" not in _src(camera=False).batch_at(0)


def test_example_is_the_real_pairs_code_on_a_virtual_capture():
  e = _src().examples_at(0)[0]
  cap = e["capture"]
  ref = pairs.make_pair(cap, e["srgb"], "invisp")
  ours = vp.pair_of(cap, e["srgb"], "invisp")
  np.testing.assert_allclose(ours["raw"], ref["raw"], atol=2e-6)
  np.testing.assert_array_equal(ours["rgb"], ref["rgb"])
  # the patch is a window of that pair
  hits = [(y, x) for y in range(0, 2 * vp.MARGIN + 1, 2) for x in range(0, 2 * vp.MARGIN + 1, 2)
          if np.array_equal(ours["raw"][y:y + PATCH, x:x + PATCH], e["raw"])]
  assert hits and np.array_equal(ours["rgb"][hits[0][0]:hits[0][0] + PATCH,
                                             hits[0][1]:hits[0][1] + PATCH], e["rgb"])
  # and the camera features are the capture's, as evaluation computes them for a file
  feats = camera_features(cap.profile())
  for k in feats:
    np.testing.assert_array_equal(e["camera"][k], feats[k])


def test_features_match_the_capture_read_back_from_its_dng(tmp_path):
  from jisp.core import dng
  e = _src().examples_at(2)[1]
  cap = e["capture"]
  path = dng.write_dng(tmp_path / "v.dng", cap.mosaic, cap.pattern, np.asarray(cap.black_level),
                       cap.white_level, 1.0 / np.asarray(cap.wb, np.float64), cap.color_matrix,
                       make="jisp", model="virtual camera")
  back = raw_io.read_capture(path)
  assert back.pattern == cap.pattern and back.wb_source == "camera"
  np.testing.assert_array_equal(back.mosaic, cap.mosaic)
  feats = camera_features(back.profile())
  for k in feats:
    np.testing.assert_allclose(e["camera"][k], feats[k], atol=1e-5)


def test_render_is_libraws_but_for_the_demosaic():
  """With LibRaw's own bilinear ("linear") demosaic, LibRaw and the in-process render agree
  to one code value away from the border: black, white and its data-maximum rule, white
  balance, matrix, gamma curve and 8-bit truncation are LibRaw's."""
  import rawpy
  for e in _src(patch_size=48).examples_at(0):
    cap = e["capture"]
    ours = vp.render_srgb(cap, demosaic="bilinear").astype(int)
    with raw_io_dng(cap) as path, rawpy.imread(str(path)) as raw:
      ref = raw.postprocess(no_auto_bright=True, output_bps=8, half_size=False, user_flip=0,
                            output_color=rawpy.ColorSpace.sRGB, gamma=vp.PIX_GAMMA,
                            use_camera_wb=True, adjust_maximum_thr=raw_io.ADJUST_MAXIMUM,
                            demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR).astype(int)
    d = np.abs(ours - ref)[2:-2, 2:-2]
    assert d.max() <= 1 and (d == 0).mean() > 0.97
  # LibRaw's AHD is another demosaic: close, not equal (README has the measured PSNR)
  agree = vp.libraw_agreement(_src(patch_size=48).examples_at(0), border=2)
  assert all(20.0 < p < 60.0 for p in agree)


class raw_io_dng:
  """A capture written as a DNG in a temporary folder (context manager -> path)."""

  def __init__(self, cap):
    import tempfile
    self.cap, self.dir = cap, tempfile.TemporaryDirectory()

  def __enter__(self):
    from pathlib import Path
    from jisp.core import dng
    c = self.cap
    return dng.write_dng(Path(self.dir.name) / "v.dng", c.mosaic, c.pattern,
                         np.asarray(c.black_level), c.white_level,
                         1.0 / np.asarray(c.wb, np.float64), c.color_matrix,
                         make="jisp", model="virtual camera")

  def __exit__(self, *exc):
    self.dir.cleanup()


def test_render_table_is_the_render_curve():
  """The in-process render's 16-bit table and the camera prior's render tone model
  (jisp.isp.tone.render_encode) are one curve: the prior inverts what the render applies."""
  from jisp.isp import tone
  r = np.arange(0x10000, dtype=np.float64) / 0x10000
  enc = np.asarray(tone.render_encode(r), np.float64) * 0x10000
  table = vp.gamma_table(*vp.PIX_GAMMA)
  assert np.abs(np.minimum(np.floor(enc), 0xFFFF) - table).max() <= 1   # float32 rounding
  import inspect
  assert inspect.signature(raw_io.render_srgb).parameters["gamma"].default == tone.RENDER_GAMMA


def test_mhc_demosaic_keeps_sites_and_flat_fields():
  rng = np.random.default_rng(0)
  for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
    rgb = vp.demosaic_mhc(np.full((12, 12), 0.3), pattern)
    np.testing.assert_allclose(rgb, 0.3, atol=1e-12)
    m = rng.random((12, 12))
    out = vp.demosaic_mhc(m, pattern)
    from jisp.isp import bayer
    idx = np.tile(bayer.channel_index(pattern), (6, 6))
    np.testing.assert_array_equal(np.take_along_axis(out, idx[..., None], -1)[..., 0], m)


def test_random_cameras_stay_in_their_ranges():
  rng = np.random.default_rng(1)
  pool = vp.upi_matrices()
  np.testing.assert_allclose(pool.sum(-1), 1.0, atol=1e-12)
  for _ in range(200):
    c = vp.random_camera(rng, pool)
    np.testing.assert_allclose(c.rgb2cam.sum(-1), 1.0, atol=1e-9)
    assert vp.RED_GAIN_RANGE[0] <= c.wb[0] <= vp.RED_GAIN_RANGE[1] and c.wb[1] == 1.0
    assert vp.BLUE_GAIN_RANGE[0] <= c.wb[2] <= vp.BLUE_GAIN_RANGE[1]
    assert c.bits in vp.BIT_DEPTHS and 0 <= c.black < c.white <= 2 ** c.bits - 1
    assert c.pattern in ("RGGB", "BGGR", "GRBG", "GBRG") and c.shot_noise > 0
  # a pool of one camera (no jitter in the mix) stays near that camera
  drawn = np.stack([vp.random_camera(rng, pool[:1]).rgb2cam for _ in range(50)])
  assert np.abs(drawn - pool[0]).mean() < 0.05


def test_mixed_source_concatenates_real_and_virtual_and_resumes(prepared):
  real_n, virt_n = vp.split_batch(4, 0.5)
  assert (real_n, virt_n) == (2, 2) and vp.split_batch(4, 0.1) == (3, 1)
  with pytest.raises(ConfigError, match="virtual_ratio"):
    vp.split_batch(4, 1.5)

  def make():
    real = ShardSource(prepared, "train", patch_size=PATCH, local_batch=real_n, seed=0,
                       camera=True)
    return vp.MixedSource(real, _src(local_batch=virt_n, seed=0))

  a = make()
  first = a.next()
  assert first["rgb"].shape == (4, PATCH, PATCH, 3) and first["wb"].shape == (4, 3)
  real_only = ShardSource(prepared, "train", patch_size=PATCH, local_batch=real_n, seed=0,
                          camera=True).next()
  virt_only = _src(local_batch=virt_n, seed=0).batch_at(0)
  _equal({k: v[:real_n] for k, v in first.items()}, real_only)
  _equal({k: v[real_n:] for k, v in first.items()}, virt_only)
  a.next()
  state = a.get_state()
  expected = [a.next() for _ in range(3)]
  b = make()
  b.set_state(state)
  for e in expected:
    _equal(b.next(), e)
  a.close()
  b.close()


def test_mixed_source_from_a_config(prepared):
  from jisp.core.config import load
  from jisp.train import sources
  cfg = load("regression_rgb2raw_tiny.py:prior=residual", [
      "--config.data.source=mixed", f"--config.data.dir={prepared}",
      f"--config.data.patch_size={PATCH}", "--config.data.virtual_ratio=0.25"])
  src = sources.make_source(cfg, "train", local_batch=8, process_index=0, process_count=1)
  assert isinstance(src, vp.MixedSource) and src.virtual.local_batch == 2
  # the training camera's matrix joins UPI's four in the virtual cameras' pool
  assert len(src.virtual.pool) == 5
  b = src.next()
  assert sorted(b) == ["raw", "rgb", "rgb2cam", "wb"] and len(b["rgb"]) == 8
  src.close()
  # no test split in the folder: evaluation batches are virtual test-split pairs
  ev = sources.make_source(cfg, "test", local_batch=4, process_index=0, process_count=1,
                           train=False)
  assert isinstance(ev, vp.VirtualPairSource) and ev.split_id == 1
  # all virtual needs no folder; a mix does
  sources.make_source(load("regression_rgb2raw_tiny.py", [
      "--config.data.source=mixed", "--config.data.virtual_ratio=1.0"]), "train",
      local_batch=2, process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="data.dir"):
    sources.make_source(load("regression_rgb2raw_tiny.py", ["--config.data.source=mixed"]),
                        "train", local_batch=2, process_index=0, process_count=1)
