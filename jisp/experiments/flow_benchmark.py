"""InvISP benchmark on real camera files: train for a time budget, test with real JPEGs.

    python -m jisp.experiments.flow_benchmark --raw-dir DIR --workdir W --cpu-seconds 600 [--no-sim]
    python -m jisp.experiments.flow_benchmark --raw-dir DIR --upi-only

Data. Every RAW file of DIR becomes an `invisp` pair (jisp.data.pairs: demosaiced,
white-balanced, gamma RAW; LibRaw sRGB saved as a real q90 JPEG). With a handful of files
from different cameras (the shared test set) a file-level split would test on an unseen
camera, while InvISP is trained per camera; so the split is by region: the bottom
`holdout` fraction of rows of every (upright) image is held out, and training patches
(stored 64x64, stride 32) come only from the rows above it. The loop's "test" split holds
patches of the held-out rows, so its eval metrics are held-out too.

Training is the one train loop (`jisp train`) in a subprocess on shards written here; at
the budget the process gets SIGTERM, which makes the loop checkpoint and exit cleanly. The
budget is wall-clock seconds from the launch of that process (compilation included) on
whatever CPU it runs on; the CPU seconds it used are reported too.

Test protocol: jisp.infer.roundtrip (InvISP's test_rgb.py / test_raw.py, what `jisp eval`
runs for a flow run) on each held-out region, at the run's JPEG quality and subsampling.

UPI baseline: jisp.isp.upi.rgb_to_raw on the ground-truth sRGB with the camera's own
metadata (rgb2cam = inverse of LibRaw's rgb_cam, the capture's white balance), no
learning, landing in the same protocol space as the RAW targets; same tiles, same PSNR.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from jisp.core import metrics
from jisp.core.config import load
from jisp.core.fileio import atomic_write_json
from jisp.infer import roundtrip
from jisp.isp import upi
from jisp.train import runs
from jisp.train.checkpoint import restore_params

HOLDOUT = 1.0 / 3.0
STORE_PATCH = 64
STORE_STRIDE = 32
TILES = 3
DEFAULT_CONFIG = "invisp_tiny.py"


# --------------------------------------------------------------------------- data

def load_pairs(raw_dir) -> list[dict]:
  """`invisp` pairs of every readable RAW file in raw_dir (others reported on stderr)."""
  from jisp.data import pairs, prepare, raw_io
  if not pathlib.Path(raw_dir).is_dir():
    raise FileNotFoundError(f"{raw_dir}: no such folder")
  out = []
  for path in prepare.list_raw_files(raw_dir):
    try:
      cap = raw_io.read_capture(path)
      pair = pairs.make_pair(cap, raw_io.render_srgb(cap), "invisp")
    except (raw_io.RawFormatError, ValueError, OSError) as e:
      print(f"flow_benchmark: skipped {' '.join(str(e).split())}", file=sys.stderr)
      continue
    out.append(dict(name=path.name, camera=cap.camera, raw=pair["raw"], rgb=pair["rgb"],
                    bits=int(cap.bits), wb=np.asarray(cap.wb, np.float32),
                    rgb_cam=np.asarray(cap.rgb_cam, np.float32)))
  if not out:
    raise FileNotFoundError(f"{raw_dir}: no readable RAW files")
  return out


def holdout_start(height: int, holdout: float = HOLDOUT) -> int:
  """First held-out row (even, so CFA phase is kept); rows above it are for training."""
  if not 0.0 < holdout < 1.0:
    raise ValueError(f"holdout must be in (0, 1), got {holdout}")
  return int(round(height * (1.0 - holdout))) // 2 * 2


def split_region(pair: dict, holdout: float = HOLDOUT):
  """(train_part, test_part) of a pair dict: rows above / from `holdout_start`."""
  r0 = holdout_start(pair["raw"].shape[0], holdout)
  top = dict(pair, raw=pair["raw"][:r0], rgb=pair["rgb"][:r0])
  bottom = dict(pair, raw=pair["raw"][r0:], rgb=pair["rgb"][r0:])
  return top, bottom


def _patches(pair, patch, stride):
  from jisp.data.prepare import patch_positions
  h, w = pair["raw"].shape[:2]
  return [(y, x) for y, x in patch_positions(h, w, patch, stride)]


def write_region_shards(pair_list, out_dir, *, holdout=HOLDOUT, patch=STORE_PATCH,
                        stride=STORE_STRIDE) -> dict:
  """Train/test shards of the region split plus a manifest the tf.data pipeline reads
  (keys used by jisp.data.pipeline: shards, raw_shape, rgb_shape, encoding)."""
  from jisp.data import shards as shards_lib
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  counts, shard_lists = {}, {}
  for split in ("train", "test"):
    name = f"{split}-region-00000-of-00001.tfrecord"
    with shards_lib.ShardWriter(out_dir / name, encoding="float16") as wr:
      for p in pair_list:
        part = split_region(p, holdout)[0 if split == "train" else 1]
        for y, x in _patches(part, patch, stride):
          wr.write(part["raw"][y:y + patch, x:x + patch], part["rgb"][y:y + patch, x:x + patch],
                   file_id=p["name"], camera=p["camera"], pos=(y, x))
      n = wr.count
    counts[split] = n
    shard_lists[split] = [shards_lib.shard_entry(out_dir / name, n)]
  if counts["train"] == 0 or counts["test"] == 0:
    raise ValueError(f"region split left no {patch}x{patch} patches ({counts}); "
                     "images too small for the hold-out")
  from jisp.data import pairs
  man = {"version": shards_lib.MANIFEST_VERSION, **pairs.protocol_fields("invisp"),
         "patch": patch, "stride": stride,
         "encoding": "float16", "split_rule": f"region: bottom {holdout:.3f} of rows held out",
         "raw_shape": [patch, patch, 3], "rgb_shape": [patch, patch, 3],
         "shards": shard_lists, "counts": counts,
         "files": [{"path": p["name"], "camera": p["camera"], "status": "ok"}
                   for p in pair_list]}
  atomic_write_json(out_dir / "manifest.json", man)
  return man


# --------------------------------------------------------------------------- evaluation

def _summary(rows) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def upi_raw(rgb, wb, rgb_cam):
  """UPI's unprocessing of sRGB with a camera's metadata, in the invisp RAW space."""
  return np.asarray(upi.rgb_to_raw(rgb, upi.camera_params(rgb_cam, wb), "invisp"))


def upi_baseline(raw_dir, *, holdout=HOLDOUT, tiles=TILES, pair_list=None) -> dict:
  """RAW PSNR of UPI (no learning) on the held-out tiles of every file in raw_dir."""
  pair_list = pair_list if pair_list is not None else load_pairs(raw_dir)
  rows, per_file = [], {}
  for pr in pair_list:
    test = split_region(pr, holdout)[1]
    h, w = test["raw"].shape[:2]
    fr = []
    for sy, sx in metrics.tile_slices(h, w, tiles):
      est = upi_raw(test["rgb"][sy, sx], pr["wb"], pr["rgb_cam"])
      fr.append({"raw_psnr": float(metrics.psnr(est, test["raw"][sy, sx]))})
    per_file[pr["name"]] = _summary(fr)
    rows += fr
  return dict(_summary(rows), method="upi", tiles=len(rows), files=per_file,
              holdout=holdout)


# --------------------------------------------------------------------------- training

def _read_steps(run_dir) -> int:
  p = pathlib.Path(run_dir) / "metrics.jsonl"
  if not p.exists():
    return 0
  steps = [json.loads(l).get("step", 0) for l in p.read_text().splitlines() if l.strip()]
  return int(max(steps, default=0))


def train_for(config, workdir, seconds: float, overrides=(), poll: float = 1.0,
              max_startup: float = 900.0) -> dict:
  """Run `jisp train` until `seconds` have passed since launch (and at least one step was
  logged), then SIGTERM it: the loop checkpoints and exits. Returns timing facts."""
  cmd = [sys.executable, "-m", "jisp", "train", "--config", str(config),
         "--workdir", str(workdir), *overrides]
  t0 = time.time()
  before = os.times()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  stop_at = None
  try:
    while proc.poll() is None:
      time.sleep(poll)
      el = time.time() - t0
      logged = _read_steps(workdir) > 0
      if (el >= seconds and logged) or el >= seconds + max_startup:
        stop_at = el
        proc.send_signal(signal.SIGTERM)
        break
    out, _ = proc.communicate(timeout=max_startup)
  except BaseException:
    proc.kill()
    raise
  wall = time.time() - t0
  after = os.times()
  if proc.returncode not in (0, -signal.SIGTERM):
    raise RuntimeError(f"jisp train failed ({proc.returncode}):\n{out[-3000:]}")
  return {"train_wall_s": wall, "sigterm_at_s": stop_at,
          "train_cpu_s": (after.children_user - before.children_user)
                         + (after.children_system - before.children_system),
          "steps_logged": _read_steps(workdir), "returncode": proc.returncode}


def run(raw_dir, workdir, cpu_seconds, with_sim: bool, *, config=DEFAULT_CONFIG,
        overrides=(), holdout=HOLDOUT, quality=90, pair_list=None) -> dict:
  """Prepare region-split shards, train `config` for `cpu_seconds`, test with real JPEGs.

  with_sim: the differentiable JPEG between forward and inverse (loss.simulator = jpeg) or
  none. Returns the test metrics (evaluate_pairs) plus training facts.
  """
  workdir = pathlib.Path(workdir)
  data_dir = workdir / "data"
  run_dir = workdir / ("train_sim" if with_sim else "train_nosim")
  if (run_dir / "checkpoints").exists():
    # The loop would resume it and the budget would silently add to an earlier run's.
    raise FileExistsError(f"{run_dir}: already trained; use a fresh --workdir")
  pair_list = pair_list if pair_list is not None else load_pairs(raw_dir)
  if not (data_dir / "manifest.json").exists():
    write_region_shards(pair_list, data_dir, holdout=holdout)
  ovr = [f"--config.data.dir={data_dir}", "--config.data.source=shards",
         f"--config.loss.simulator={'jpeg' if with_sim else 'none'}",
         f"--config.jpeg.quality={quality}",
         "--config.num_steps=100000000", "--config.checkpoint_every=100000000",
         "--config.eval_every=100000000", *overrides]
  facts = train_for(config, run_dir, cpu_seconds, ovr)
  cfg = load(config, ovr)
  task = runs.build_task(cfg)
  step, params = restore_params(str(run_dir), task)
  test = [split_region(p, holdout)[1] for p in pair_list]
  q, subsampling = roundtrip.jpeg_settings(cfg)
  res = roundtrip.evaluate_pairs(task, params, test, quality=q, subsampling=subsampling)
  res.update(facts, step=int(step), with_sim=bool(with_sim), config=str(config),
             overrides=list(overrides), holdout=holdout, budget_s=float(cpu_seconds),
             files_used=[p["name"] for p in pair_list], workdir=str(workdir))
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--raw-dir", required=True)
  ap.add_argument("--workdir", default=None)
  ap.add_argument("--cpu-seconds", type=float, default=600.0)
  ap.add_argument("--config", default=str(DEFAULT_CONFIG))
  ap.add_argument("--no-sim", action="store_true", help="train without the JPEG simulator")
  ap.add_argument("--both", action="store_true", help="train with and without the simulator")
  ap.add_argument("--upi-only", action="store_true", help="only the UPI baseline")
  ap.add_argument("--holdout", type=float, default=HOLDOUT)
  args, rest = ap.parse_known_args(argv)
  pairs = load_pairs(args.raw_dir)
  results = [upi_baseline(args.raw_dir, holdout=args.holdout, pair_list=pairs)]
  if not args.upi_only:
    if not args.workdir:
      ap.error("--workdir is required unless --upi-only")
    sims = [True, False] if args.both else [not args.no_sim]
    for s in sims:
      results.append(run(args.raw_dir, args.workdir, args.cpu_seconds, s, config=args.config,
                         overrides=rest, holdout=args.holdout, pair_list=pairs))
  for r in results:
    print(json.dumps(r, default=float), flush=True)
  return 0


def _cli() -> int:
  from jisp.core import hostenv
  from jisp.core.errors import UserError
  hostenv.configure()
  try:
    return main()
  except (OSError, ValueError, UserError) as e:   # bad folder, used workdir, small images
    print(f"flow_benchmark: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(_cli())
