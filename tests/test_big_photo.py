"""Big photos: chunk-at-a-time prediction (the same image as merging all patches at once),
resume after an interrupt (an interrupted 2-tile-batch reconstruction resumes to the
identical DNG; broken or foreign saved tiles are not reused), the progress bar.

The 24-MP peak-memory benchmark is run by hand:
  JISP_BIG_PHOTO_BENCH=1 .venv/bin/python -m pytest -q -s tests/test_big_photo.py -k bench
"""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import MICRO, REPO, env, run_jisp
from jisp.core.config import load
from jisp.infer import predict, reconstruct, tiling
from jisp.tasks.base import PredictOptions
from jisp.train import runs

# DDIM with eta = 1 draws noise in every step: chunk keys must match across a resume too.
OPTIONS = PredictOptions(sampler="ddim", steps=2, eta=1.0)


@pytest.fixture(scope="module")
def ddpm():
  """A DDPM run of the smallest U-Net with its initial weights (no training needed: the
  tiles only have to be what the weights give), sampled two patches per chunk."""
  cfg = load("ddpm_tiny.py", MICRO)
  task = runs.build_task(cfg)
  run = runs.Run(None, cfg, task, 0, runs.random_params(task))
  return run, predict.PatchPredictor(task, run.params, OPTIONS, max_batch=2, devices=2)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
  d = tmp_path_factory.mktemp("in")
  rgb = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
  Image.fromarray(rgb).save(d / "photo.png")
  return d / "photo.png"


class Interrupt(KeyboardInterrupt):
  pass


def _run(ddpm, photo, out, *, seed=0, stop_after=None, shared=False, progress=False):
  """reconstruct_files; stop_after=k raises a KeyboardInterrupt after chunk k. Returns
  (chunks sampled in this call, log lines)."""
  run, pr = ddpm
  seen, logs = [], []

  def on_chunk(done, total):
    seen.append(done)
    if stop_after is not None and done == stop_after:
      raise Interrupt()
  failed = reconstruct.reconstruct_files(
      run, pr, [photo], out, reconstruct.Tiling(4, False, shared),
      profile=reconstruct.DEFAULT_PROFILE, protocol="invisp",
      seed=seed, save_seconds=0.0, on_chunk=on_chunk, log=logs.append, warn=logs.append,
      progress=progress)
  assert failed == 0
  return seen, logs


@pytest.mark.parametrize("shared", [False, True])
def test_interrupted_reconstruct_resumes_to_the_identical_dng(ddpm, photo, tmp_path, shared):
  whole, _ = _run(ddpm, photo, tmp_path / "whole", shared=shared)
  assert whole == [1, 2, 3, 4, 5, 6]  # 12 patches of 16 px (overlap 4), 2 per chunk
  with pytest.raises(Interrupt):
    _run(ddpm, photo, tmp_path / "cut", stop_after=2, shared=shared)
  cut = tmp_path / "cut"
  assert not (cut / "photo.dng").exists()
  tiles = cut / ".photo.tiles"
  assert (tiles / "run.json").is_file() and len(list(tiles.glob("*.npy"))) == 2
  seen, logs = _run(ddpm, photo, cut, shared=shared)
  assert seen == [3, 4, 5, 6]  # only what was not saved was sampled again
  assert any("resuming with 4 of 12 tiles" in m for m in logs)
  for name in ("photo.dng", "photo_raw16.tif", "photo_preview.png"):
    assert (cut / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
  assert not tiles.exists() and sorted(p.name for p in cut.iterdir()) == [
      "photo.dng", "photo_preview.png", "photo_raw16.tif"]


def test_broken_or_foreign_tiles_are_not_reused(ddpm, photo, tmp_path):
  whole, _ = _run(ddpm, photo, tmp_path / "whole")
  cut = tmp_path / "cut"
  with pytest.raises(Interrupt):
    _run(ddpm, photo, cut, stop_after=3)
  parts = sorted((cut / ".photo.tiles").glob("*.npy"))
  assert len(parts) == 3
  parts[1].write_bytes(parts[1].read_bytes()[:100])  # a save cut short
  (cut / ".photo.tiles" / ".000000004-000000006.npy.x.tmp").write_bytes(b"half")
  seen, logs = _run(ddpm, photo, cut)
  assert seen == [2, 3, 4, 5, 6] and any("resuming with 2 of 12" in m for m in logs)
  assert (cut / "photo.dng").read_bytes() == (tmp_path / "whole" / "photo.dng").read_bytes()

  # tiles of another seed (or run, options, input) are dropped, and the run says so
  with pytest.raises(Interrupt):
    _run(ddpm, photo, cut, stop_after=2)
  seen, logs = _run(ddpm, photo, cut, seed=1)
  assert seen == [1, 2, 3, 4, 5, 6]
  assert any("another run, options or input (key differ(s))" in m for m in logs)
  fresh, _ = _run(ddpm, photo, tmp_path / "seed1", seed=1)
  assert (cut / "photo.dng").read_bytes() == (tmp_path / "seed1" / "photo.dng").read_bytes()
  assert (cut / "photo.dng").read_bytes() != (tmp_path / "whole" / "photo.dng").read_bytes()


def test_chunked_prediction_equals_merging_all_patches():
  """predict_image (one chunk at a time) gives tiling.merge of all patches predicted in
  one call, for a deterministic task with camera features (UPI)."""
  run = runs.baseline_run("upi")
  pr = predict.PatchPredictor(run.task, run.params, None, max_batch=8)
  img = np.random.default_rng(2).random((150, 171, 3)).astype(np.float32)
  tile = reconstruct.Tiling(16)
  cam = reconstruct.camera_features(run.task.default_camera())
  layout = tile.layout(img.shape, pr.patch)
  assert len(layout) > pr.chunk_size(len(layout))  # several chunks
  want = tiling.merge(pr(tiling.split(img, layout), None, jax.random.PRNGKey(0), camera=cam),
                      layout)
  got = reconstruct.predict_image(pr, img, tile, key=jax.random.PRNGKey(0), camera=cam)
  assert got.shape == img.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_progress_bar_counts_tiles_and_resumed_ones(ddpm, photo, tmp_path, capsys):
  with pytest.raises(Interrupt):
    _run(ddpm, photo, tmp_path / "o", stop_after=2)
  capsys.readouterr()
  _run(ddpm, photo, tmp_path / "o", progress=True)
  err = capsys.readouterr().err
  # it starts at the resumed count; the rate and ETA are per tile
  assert "photo.png" in err and "4/12 [" in err and "tile/s" in err


@pytest.mark.skipif(not os.environ.get("JISP_BIG_PHOTO_BENCH"),
                    reason="24-MP benchmark: set JISP_BIG_PHOTO_BENCH=1 to run it by hand")
@pytest.mark.parametrize("max_batch", [16, 256])
def test_bench_24mp_peak_memory(tmp_path_factory, max_batch):
  """Peak RSS of `jisp reconstruct` on a 6000x4000 JPEG with the tiny DDPM (DDIM, 1
  step), measured by /usr/bin/time; printed for README."""
  root = tmp_path_factory.getbasetemp() / "bench24"
  wd, jpg = root / "run", root / "big.jpg"
  if not (wd / "config.json").exists():
    run_jisp("train", "--config", "configs/ddpm_tiny.py", "--workdir", str(wd),
             "--config.model.base_channels=8", "--config.model.num_groups=4",
             "--config.batch_size=8", "--config.num_steps=2", "--config.log_every=1",
             "--config.checkpoint_every=100", "--config.eval_every=1000", devices=1)
  if not jpg.exists():
    y, x = np.mgrid[0:4000, 0:6000].astype(np.float32)
    rgb = np.stack([x / 6000, y / 4000, 0.5 + 0.4 * np.sin(x / 97) * np.cos(y / 61)], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(jpg, quality=90)
  out = root / f"out{max_batch}"
  cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "jisp", "reconstruct", "--workdir",
         str(wd), str(jpg), "-o", str(out), "--sampler", "ddim", "--steps", "1",
         "--max-batch", str(max_batch), "--no-progress", "--check"]
  p = subprocess.run(cmd, env=env(devices=1), cwd=REPO, capture_output=True, text=True,
                     timeout=6 * 3600)
  assert p.returncode == 0, p.stderr[-3000:]
  rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
  wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", p.stderr).group(1)
  print(f"\n24 MP, --max-batch {max_batch}: peak RSS {rss / 2**20:.2f} GiB, wall {wall}\n"
        + p.stdout)
  assert (out / "big.dng").stat().st_size > 48_000_000
