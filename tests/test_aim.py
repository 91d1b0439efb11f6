"""The AIM-style protocol and data (full-resolution sRGB, half-resolution packed RGGB RAW):
packing order against jisp.isp.bayer and SSDNet's pixel-unshuffle, even crops keep the
Bayer phase, the AIM 2022 folder loader, the sources, tiled prediction at output scale 2,
and packed4 SSDNet trained end to end (`jisp train` on the synthetic AIM-style source) then
scored by `jisp compare` with the AIM metrics."""
import numpy as np
import pytest
from PIL import Image

from jisp.core import images
from jisp.core.errors import ConfigError, DataError
from jisp.data import aim, pairs
from jisp.isp import bayer


def capture(pattern="RGGB", h=24, w=32, orientation=1, seed=0):
  """A Capture from the virtual camera (real levels, a given CFA layout)."""
  from jisp.data import raw_io
  from jisp.data.virtual_camera import synthesize_capture
  rgb = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
  d = synthesize_capture(rgb, seed, pattern=pattern, bits=12)
  mos = np.asarray(d["mosaic"])  # even-cropped: odd sizes get a last row/column back
  mos = np.pad(mos, ((0, h - mos.shape[0]), (0, w - mos.shape[1])), mode="edge")
  return raw_io.Capture(
      path=f"virtual_{pattern}.dng", mosaic=mos, pattern=pattern,
      black_level=np.full(4, d["black_level"], np.float32), white_level=float(d["white_level"]),
      linearization=None, camera_wb=(1, 1, 1, 1), daylight_wb=(1, 1, 1, 1),
      wb=np.ones(3, np.float32), wb_source="camera", color_matrix=None,
      rgb_cam=np.eye(3, dtype=np.float32), orientation=orientation, camera="virtual", bits=12)


def render(cap):
  """A stand-in for LibRaw's render: any uint8 upright image of the mosaic's size."""
  up = images.apply_orientation(cap.mosaic, cap.orientation)
  g = (up.astype(np.float64) / up.max() * 255).astype(np.uint8)
  return np.ascontiguousarray(np.stack([g, g[::-1], g[:, ::-1]], -1))


# ------------------------------------------------------------------ packing order

@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_aim_pair_packs_r_gr_gb_b_as_bayer_pack(pattern):
  cap = capture(pattern)
  pair = pairs.make_aim_pair(cap, render(cap))
  assert pair["rgb"].shape == (24, 32, 3) and pair["raw"].shape == (12, 16, 4)
  want = np.asarray(bayer.pack(pairs.normalized_mosaic(cap), pattern))
  np.testing.assert_array_equal(pair["raw"], want)
  # channel k holds colour R, G, G, B whatever the layout: a grey-free constant scene
  # mosaicked in this layout packs to (r, g, g, b)
  scene = np.broadcast_to(np.float32([0.9, 0.5, 0.1]), (24, 32, 3))
  packed = np.asarray(bayer.pack(bayer.mosaic(scene, pattern), pattern))
  np.testing.assert_allclose(packed[0, 0], [0.9, 0.5, 0.5, 0.1], atol=1e-6)
  # the sRGB is the same real JPEG the invisp protocol makes, at full resolution
  np.testing.assert_array_equal(pair["rgb"], pairs.make_pair(cap, render(cap), "invisp")["rgb"])


def test_ssdnet_pixel_unshuffle_is_the_aim_packing_on_rggb():
  from jisp.models.ssdnet import pixel_shuffle, pixel_unshuffle
  cap = capture("RGGB", seed=3)
  pair = pairs.make_aim_pair(cap, render(cap))
  mos = pairs.normalized_mosaic(cap)
  un = np.asarray(pixel_unshuffle(mos[None, :, :, None]))[0]
  np.testing.assert_array_equal(un, pair["raw"])
  np.testing.assert_array_equal(np.asarray(pixel_shuffle(un[None]))[0, :, :, 0], mos)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_odd_capture_keeps_the_window_aligned_under_every_orientation(orientation):
  cap = capture("GRBG", h=25, w=33, orientation=orientation, seed=1)
  even, (rows, cols) = pairs._even_window(cap)
  assert even.mosaic.shape == (24, 32) and even.pattern == cap.pattern
  idx = np.arange(25 * 33).reshape(25, 33)
  up = images.apply_orientation(idx, orientation)
  np.testing.assert_array_equal(up[rows, cols],
                                images.apply_orientation(idx[:24, :32], orientation))
  pair = pairs.make_aim_pair(cap, render(cap))
  assert pair["rgb"].shape[:2] == (2 * pair["raw"].shape[0], 2 * pair["raw"].shape[1])


# ------------------------------------------------------------------ crops keep the phase

def test_even_crops_keep_the_bayer_phase_and_odd_ones_are_refused():
  rng = np.random.default_rng(0)
  rgb = rng.random((40, 56, 3)).astype(np.float32)
  raw = np.asarray(bayer.pack(bayer.mosaic(rgb, "RGGB"), "RGGB"))
  for _ in range(20):
    top, left = aim.crop_offsets(rng, 40, 56, 16)
    assert top % 2 == 0 and left % 2 == 0 and top + 16 <= 40 and left + 16 <= 56
    c_rgb, c_raw = aim.crop_pair(rgb, raw, top, left, 16)
    assert c_raw.shape == (8, 8, 4)
    np.testing.assert_array_equal(c_raw, bayer.pack(bayer.mosaic(c_rgb, "RGGB"), "RGGB"))
  # an odd offset would put a green site first: the same crop packs differently
  shifted = np.asarray(bayer.pack(bayer.mosaic(rgb[1:17, 0:16], "RGGB"), "RGGB"))
  assert not np.allclose(shifted, raw[0:8, 0:8])
  with pytest.raises(ValueError, match="even"):
    aim.crop_pair(rgb, raw, 1, 0, 16)


def test_synthetic_aim_batches_are_the_rggb_packing_of_the_linear_camera():
  from jisp.data import synthetic
  src = aim.SyntheticAIMSource(patch_size=16, local_batch=3, seed=5)
  b = src.next()
  assert b["rgb"].shape == (3, 16, 16, 3) and b["raw"].shape == (3, 8, 8, 4)
  rgb, raw3 = synthetic.make_pair(np.random.default_rng([5, 0, 0, 1]), 16)
  np.testing.assert_array_equal(b["rgb"][1], rgb)
  lin = np.clip(raw3, 0, 1) ** np.float32(2.2)
  np.testing.assert_allclose(b["raw"][1], bayer.pack(bayer.mosaic(lin, "RGGB"), "RGGB"),
                             atol=1e-6)
  src2 = aim.SyntheticAIMSource(patch_size=16, local_batch=3, seed=5)
  src2.set_state({"batches": 0})
  np.testing.assert_array_equal(src2.next()["raw"], b["raw"])


# ------------------------------------------------------------------ AIM 2022 folder

def write_aim_folder(root, n=10, size=(20, 28), val=0):
  """n challenge-style pairs: <i>.jpg and <i>.npy (uint16 /1024), the RAW the RGGB packing
  of the decoded JPEG (so the phase of any crop can be checked)."""
  rng = np.random.default_rng(0)
  for split, count in (("train", n), ("val", val)):
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    for i in range(count):
      rgb = (rng.random(size + (3,)) * 255).astype(np.uint8)
      Image.fromarray(rgb).save(d / f"{i}.jpg", quality=95)
      dec = np.asarray(Image.open(d / f"{i}.jpg").convert("RGB")).astype(np.float32) / 255
      packed = np.asarray(bayer.pack(bayer.mosaic(dec, "RGGB"), "RGGB"))
      np.save(d / f"{i}.npy", np.round(packed * 1024).astype(np.uint16))
  return root


def test_aim_folder_splits_and_crops(tmp_path):
  root = write_aim_folder(tmp_path / "s7")
  train, test = aim.list_pairs(root, "train"), aim.list_pairs(root, "test")
  assert [p[0].stem for p in train] == [str(i) for i in range(9)]
  assert [p[0].stem for p in test] == ["9"]   # the last 10% by name
  src = aim.AIMFolderSource(root, patch_size=12, local_batch=4, seed=1)
  b = src.next()
  assert b["rgb"].shape == (4, 12, 12, 3) and b["raw"].shape == (4, 6, 6, 4)
  for rgb, raw in zip(b["rgb"], b["raw"]):  # the crop of the RAW is the crop's packing
    np.testing.assert_allclose(raw, bayer.pack(bayer.mosaic(rgb, "RGGB"), "RGGB"),
                               atol=0.5 / 1024 + 1e-6)
  again = aim.AIMFolderSource(root, patch_size=12, local_batch=4, seed=1)
  np.testing.assert_array_equal(again.next()["raw"], b["raw"])
  with_val = write_aim_folder(tmp_path / "v", n=4, val=2)
  assert len(aim.list_pairs(with_val, "train")) == 4
  assert [p[0].stem for p in aim.list_pairs(with_val, "test")] == ["0", "1"]


def test_aim_folder_bad_files_are_one_line(tmp_path):
  root = write_aim_folder(tmp_path / "s7", n=2)
  np.save(root / "train" / "1.npy", np.full((10, 14, 4), 2000, np.uint16))
  with pytest.raises(DataError, match=r"1\.npy.*\[0, 1024\]"):
    aim.read_raw(root / "train" / "1.npy")
  np.save(root / "train" / "1.npy", np.zeros((9, 14, 4), np.uint16))
  with pytest.raises(DataError, match="not half"):
    aim.load_pair(root / "train" / "1.jpg", root / "train" / "1.npy")
  with pytest.raises(DataError, match="no <name>.npy"):
    aim.list_pairs(tmp_path, "train")


def test_submission_is_rounded_1024_codes():
  x = np.array([0.0, 0.49 / 1024, 0.51 / 1024, 0.5, 1.0, 1.2], np.float32).reshape(1, 1, 6)
  s = aim.to_submission(x[..., :4])
  assert s.dtype == np.uint16
  np.testing.assert_array_equal(aim.to_submission(x[..., 2:6]).ravel(), [1, 512, 1024, 1024])
  np.testing.assert_array_equal(s.ravel(), [0, 0, 1, 512])


# ------------------------------------------------------------------ sources

def _config(**data):
  from jisp.configs import ssdnet_tiny
  c = ssdnet_tiny.get_config("output=packed4,strategy=plain")
  c.data.update(data)
  return c


def test_sources_give_aim_batches_and_refuse_what_cannot(tmp_path):
  from jisp.tasks.ssdnet import SSDNetTask
  from jisp.train import sources
  c = _config(patch_size=16)
  assert sources.check_data(c) is None and not sources.uses_shards(c)
  b = sources.make_source(c, "train", local_batch=2, process_index=0, process_count=1).next()
  spec = SSDNetTask(c).batch_spec(2)
  assert {k: v.shape for k, v in b.items()} == {k: v.shape for k, v in spec.items()}
  root = write_aim_folder(tmp_path / "s7")
  src = sources.make_source(_config(source="aim", dir=str(root), patch_size=12), "test",
                            local_batch=2, process_index=0, process_count=1, train=False)
  assert isinstance(src, aim.AIMFolderSource) and [p[0].stem for p in src.pairs] == ["9"]
  for bad, msg in ((dict(source="aim", dir=""), "data.dir"),
                   (dict(source="shards", dir=str(root)), "data.source"),
                   (dict(source="synthetic", dir=str(root)), "data.source=aim"),
                   (dict(patch_size=15), "even"),
                   (dict(source="aim", dir=str(tmp_path / "nothing")), "data.dir")):
    with pytest.raises(ConfigError, match=msg):
      sources.check_data(_config(**bad))


# ------------------------------------------------------------------ output scale 2

def test_merge_at_output_scale_two_is_exact():
  from jisp.infer import tiling
  rng = np.random.default_rng(0)
  img = rng.random((38, 54, 3)).astype(np.float32)
  down = pairs.area_downsample2(img)
  for overlap, grid in ((4, False), (0, False), (0, True)):
    layout = tiling.make_layout(38, 54, 16, overlap, grid, align=2)
    assert all(v % 2 == 0 for v in layout.ys + layout.xs)
    patches = tiling.split(img, layout)
    out = tiling.merge(np.stack([pairs.area_downsample2(p) for p in patches]), layout)
    assert out.shape == (19, 27, 3)
    np.testing.assert_allclose(out, down, atol=1e-6)
  odd = tiling.make_layout(37, 53, 16, 4, align=2)   # last start rounded up, padded
  assert all(v % 2 == 0 for v in odd.ys + odd.xs) and odd.padded[0] >= 37
  bad = tiling.make_layout(37, 53, 16, 4)             # positions 21, 37: not on the grid
  with pytest.raises(ValueError, match="align=2"):
    tiling.merge(np.zeros((len(bad), 8, 8, 4), np.float32), bad)
  assert list(bad.ys) == tiling.axis_starts(37, 16, 4) == [0, 12, 21]  # scale 1 as before


P4_TRAIN = ["--config.stages=((2, 16, 8),)", "--config.batch_size=8",
            "--config.data.patch_size=16", "--config.num_steps=2", "--config.log_every=1",
            "--config.checkpoint_every=100", "--config.eval_every=100",
            "--config.eval_batches=1"]


@pytest.fixture(scope="module")
def packed4_run(tmp_path_factory):
  """SSDNet packed4 (soft supervision, training-resampling) trained end to end with
  `jisp train` on the synthetic AIM-style source: 2 steps, then the loop's eval."""
  from helpers import cli
  wd = tmp_path_factory.mktemp("p4") / "run"
  assert cli("train", "--config", "configs/ssdnet_tiny.py:output=packed4", "--workdir", wd,
             *P4_TRAIN) == 0
  return wd


def test_packed4_ssdnet_trains_end_to_end_on_the_synthetic_aim_source(packed4_run):
  import json
  from jisp.train import runs
  logs = [json.loads(l) for l in (packed4_run / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in logs if "loss" in r]
  ev = [r for r in logs if "eval/psnr" in r]
  assert [r["step"] for r in train] == [1, 2]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["loss_sigma"]) for r in train)
  assert ev and ev[-1]["step"] == 2 and np.isfinite(ev[-1]["eval/psnr"])
  run = runs.load_run(packed4_run)
  assert run.step == 2 and run.config.data.protocol == "aim"
  assert run.task.io.out_scale == 2 and run.task.io.out_channels == 4


def test_jisp_compare_scores_the_packed4_run_with_the_aim_metrics(packed4_run, tmp_path,
                                                                  capsys):
  """And its tiled prediction is half resolution, patch by patch the network's."""
  import json
  import jax
  from helpers import cli
  from jisp.core import metrics
  from jisp.infer import reconstruct
  from jisp.infer.predict import PatchPredictor
  from jisp.train import runs
  root = write_aim_folder(tmp_path / "s7", n=10, size=(24, 32))
  out = tmp_path / "out"
  # UPI has no packed output: its row fails, the run's does not
  assert cli("compare", packed4_run, "--baseline", "upi", "--data", root, "-o", out,
             "--no-progress", "--max-batch", "8", "--crop", "16") == 1
  capsys.readouterr()
  res = json.loads((out / "compare.json").read_text())
  ok, upi = res["methods"]
  assert res["protocol"] == "aim"  # the run's: an AIM folder has no manifest
  assert ok["status"] == "ok" and ok["task"] == "ssdnet" and ok["steps"] == 2
  assert upi["status"] == "failed" and "aim" in upi["error"]
  assert [f["file"] for f in res["files"]] == ["9"] and res["cameras"] == ["AIM"]
  # the same numbers from the run's own tiled prediction at output scale 2
  run = runs.load_run(packed4_run)
  task = run.task
  pair = aim.load_pair(*aim.list_pairs(root, "test")[0])
  pred = reconstruct.predict_image(PatchPredictor(task, run.params, max_batch=8),
                                   pair["rgb"], reconstruct.make_tiling(16),
                                   key=jax.random.PRNGKey(0))
  assert pred.shape == (12, 16, 4) and np.isfinite(pred).all()
  # a patch-aligned region equals the network on that patch alone (mu is per patch)
  direct = np.asarray(task.predict(run.params, pair["rgb"][None, :16, :16], None,
                                   task.resolve_options(None)))[0]
  assert direct.shape == (8, 8, 4)
  np.testing.assert_allclose(pred[:4, :4], direct[:4, :4], atol=1e-5)
  img = ok["images"][0]
  assert abs(img["raw_psnr"] - float(metrics.aim_psnr(pred, pair["raw"]))) < 1e-4
  assert abs(img["raw_ssim"] - float(metrics.aim_ssim(pred, pair["raw"]))) < 1e-5
  assert abs(img["raw_psnr_tiles"] - metrics.tiled_psnr(pred, pair["raw"])) < 1e-4
  assert "AIM 2022 PSNR" in (out / "compare.md").read_text()
  assert all((out / f"compare.{e}").stat().st_size > 0 for e in ("md", "json", "png"))


def test_jisp_eval_of_the_packed4_run_scores_it_like_compare(packed4_run, tmp_path, capsys):
  import json
  from helpers import cli
  root = write_aim_folder(tmp_path / "s7", n=10, size=(24, 32))
  assert cli("compare", packed4_run, "--data", root, "-o", tmp_path / "cmp", "--no-progress",
             "--max-batch", "8", "--json") == 0
  want = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"][0]
  assert cli("eval", "--workdir", packed4_run, "--data", root, "--out", tmp_path / "ev",
             "--no-progress", "--max-batch", "8", "--json") == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  saved = json.loads((tmp_path / "ev" / "results.json").read_text())
  assert printed == saved and saved["protocol"] == "aim"
  got = saved["methods"][0]
  assert got["status"] == "ok"
  assert got["images"][0]["raw_psnr"] == pytest.approx(want["images"][0]["raw_psnr"], abs=1e-6)
