"""Every registered task through every command: `jisp train`, `bench predict`, `eval` and
`reconstruct` on its tiny config (exit 0, finite numbers, the output files).

Runs the commands in this process (jisp.cli.main) on micro sizes, so the compiles stay small;
the training data is the in-memory synthetic source, the evaluation data virtual-camera
DNGs read through rawpy like real camera files.
"""
import json
import math

import numpy as np
import pytest
from PIL import Image

from helpers import cli
from jisp import tasks

COMMON = ["--config.batch_size=8", "--config.data.patch_size=16", "--config.num_steps=2",
          "--config.log_every=1", "--config.checkpoint_every=100", "--config.eval_every=100",
          "--config.eval_batches=1"]
UNET = ["--config.model.base_channels=8", "--config.model.num_groups=4"]
# (config, its micro overrides, bench/eval/reconstruct options)
CASES = {
    "ddpm": ("configs/ddpm_tiny.py", UNET, ["--sampler", "ddim", "--steps", "2"]),
    "dtdm_rgb2raw": ("configs/dtdm_rgb2raw_tiny.py", UNET, ["--steps", "2"]),
    "dtdm_raw2rgb": ("configs/dtdm_raw2rgb_tiny.py", UNET, ["--steps", "2"]),
    "flow_isp": ("configs/invisp_tiny.py", ["--config.model.growth=4"], []),
    "flow_isp_video": ("configs/invisp_video_tiny.py",
                       ["--config.model.growth=4", "--config.video.frame_size=8"], []),
    "regression_rgb2raw": ("configs/regression_rgb2raw_tiny.py", UNET, []),
    "regression_raw2rgb": ("configs/regression_raw2rgb_tiny.py", UNET, []),
    "ssdnet": ("configs/ssdnet_tiny.py", ["--config.stages=((2, 16, 8),)"], []),
    "upi": ("configs/upi.py", [], []),
}


def test_every_registered_task_has_a_case():
  from jisp.core.config import load
  covered = {load(cfg).task for cfg, _, _ in CASES.values()}
  assert covered == set(tasks.TASKS)


@pytest.fixture(scope="module")
def raws(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  return write_virtual_raw_dir(tmp_path_factory.mktemp("raws"), 2, seed=11, size=(48, 64))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
  p = tmp_path_factory.mktemp("photo") / "photo.png"
  Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)).save(p)
  return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_task_through_every_command(case, raws, photo, tmp_path, capsys):
  cfg, micro, opts = CASES[case]
  wd = tmp_path / "run"
  assert cli("train", "--config", cfg, "--workdir", wd, *COMMON, *micro) == 0
  capsys.readouterr()

  assert cli("bench", "predict", "--workdir", wd, "--batch", "8", "--json", "--repeats", "1",
             "--warmup", "0", "--matmul-n", "128", *opts) == 0
  rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rec["task"] == json.loads((wd / "config.json").read_text())["task"]
  for k in ("seconds", "seconds_per_image", "patch_nfe_per_s", "achieved_gflops",
            "gflop_per_nfe_patch"):
    assert math.isfinite(rec[k]) and rec[k] > 0, (k, rec)

  assert cli("eval", "--workdir", wd, "--data", raws[0].parent, "--json", "--max-batch", "32",
             "--no-progress", *opts) == 0
  res = json.loads((wd / "eval" / "results.json").read_text())
  assert res["n_images"] == 2 and math.isfinite(res["mean_raw_psnr"])
  if res.get("video"):  # a video flow: per-frame RAW PSNR and temporal consistency
    per_file = list(res["files"].values())
    assert all(len(f["raw_psnr_per_frame"]) == res["frames"] > 1 for f in per_file)
    assert math.isfinite(res["temporal_psnr"]) and res["bpp"] > 0
  assert (wd / "eval" / "report.png").stat().st_size > 0
  capsys.readouterr()

  out = tmp_path / "out"
  rgb2raw = rec["direction"] in ("rgb2raw", "both")
  src = photo if rgb2raw else raws[0]
  assert cli("reconstruct", "--workdir", wd, src, "-o", out, "--no-progress", *opts) == 0
  if rgb2raw:
    import rawpy
    with rawpy.imread(str(out / f"{src.stem}.dng")) as r:
      assert r.raw_image_visible.shape == (40, 52)
  else:
    png = np.asarray(Image.open(out / f"{src.stem}.png"))
    assert png.shape == (48, 64, 3) and png.std() > 0
