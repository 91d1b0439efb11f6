"""Every system on one table on real camera files, each trained for the same CPU time.

    python -m jisp.experiments.compare_benchmark --raw-dir ../shared/data/raw \
        --test canon_eos_550d_magiclantern_colorchart.dng --workdir W --cpu-seconds 360

Data: the RAW files of --raw-dir prepared once in the invisp protocol (jisp prepare, 64 px
patches, stride 32) with a split list: --test files are the test split, every other file
trains; so the test camera is one no system saw.

Training: each system's tiny config (the one train loop, `jisp train` in a subprocess, the
in-memory source replaced by the prepared shards) until its process has used
--cpu-seconds of CPU time counted from its first logged step (so compilation is not
charged), then SIGTERM: the loop checkpoints and exits. Configs run with a step count
they never reach, so their learning-rate schedules stay at the start (warm-up done,
cosine barely begun) for every system alike.

Test: `jisp compare` (jisp.infer.compare) of every run plus UPI with the test file's own
metadata, on the whole test image, with one sampler setting for the sampling systems
(--steps/--eta). Writes W/compare/compare.{md,json,png} and W/benchmark.json (training
facts per system).
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

from jisp.core.fileio import atomic_write_json, atomic_write_text

# name -> (config, overrides); tiny configs, batch sizes as configured.
SYSTEMS = {
    "ddpm": ("ddpm_tiny.py", []),
    "dtdm": ("dtdm_rgb2raw_tiny.py", []),
    "flow": ("invisp_tiny.py", []),
    "regression": ("regression_rgb2raw_tiny.py", []),
    "ssdnet": ("ssdnet_tiny.py", ["--config.stages=((1000000, 32, 8),)",
                                  "--config.optim.constant_steps=1000000"]),
    "unet_sid": ("unet_sid.py:tiny", []),
}
NEVER = 1_000_000  # num_steps: the CPU budget stops training, not the schedule


def _first_logged(workdir) -> bool:
  p = pathlib.Path(workdir) / "metrics.jsonl"
  return p.is_file() and any('"loss"' in l for l in p.read_text().splitlines())


def _steps(workdir) -> int:
  p = pathlib.Path(workdir) / "metrics.jsonl"
  if not p.is_file():
    return 0
  return max((json.loads(l).get("step", 0) for l in p.read_text().splitlines() if l.strip()),
             default=0)


def train_for_cpu(config, workdir, cpu_seconds: float, overrides=(), poll: float = 1.0,
                  max_wall: float = 7200.0) -> dict:
  """`jisp train` until its process tree has used cpu_seconds of CPU after its first
  logged step, then SIGTERM (checkpoint and exit). Returns timing facts."""
  import psutil
  cmd = [sys.executable, "-m", "jisp", "train", "--config", str(config),
         "--workdir", str(workdir), *overrides]
  t0 = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ps = psutil.Process(proc.pid)

  def cpu():
    try:
      t = ps.cpu_times()
      return t.user + t.system + t.children_user + t.children_system
    except psutil.NoSuchProcess:
      return None

  cpu_start = wall_start = None
  try:
    while proc.poll() is None:
      time.sleep(poll)
      c = cpu()
      if c is None:
        break
      if cpu_start is None and _first_logged(workdir):
        cpu_start, wall_start = c, time.time() - t0
      if cpu_start is not None and c - cpu_start >= cpu_seconds:
        break
      if time.time() - t0 > max_wall:
        break
    used = cpu()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=900)
  except BaseException:
    proc.kill()
    raise
  if proc.returncode not in (0, -signal.SIGTERM):
    raise RuntimeError(f"jisp train {config} failed ({proc.returncode}):\n{out[-3000:]}")
  return {"config": str(config), "overrides": list(overrides), "steps": _steps(workdir),
          "cpu_s_training": None if used is None or cpu_start is None else used - cpu_start,
          "wall_s_to_first_step": wall_start, "wall_s": time.time() - t0}


def prepare_data(raw_dir, test_names, out) -> pathlib.Path:
  """invisp shards of raw_dir with test_names as the test split (split list)."""
  from jisp.data import prepare
  raw_dir, out = pathlib.Path(raw_dir).resolve(), pathlib.Path(out)
  files = prepare.list_raw_files(raw_dir)
  names = {p.name for p in files}
  missing = [t for t in test_names if t not in names]
  if missing:
    raise SystemExit(f"--test {missing}: not RAW files of {raw_dir}")
  out.mkdir(parents=True, exist_ok=True)
  split = out / "split.txt"
  atomic_write_text(split, "".join(f"{'test' if p.name in test_names else 'train'} "
                                   f"{p.name}\n" for p in files))
  prepare.prepare(raw_dir, out / "prepared", protocol="invisp", patch=64, stride=32,
                  split_list=split, shards=2, workers=1, progress=False)
  return out / "prepared"


def run(raw_dir, test_names, workdir, cpu_seconds, *, systems=None, steps=20, eta=1.0,
        max_batch=256) -> dict:
  from jisp.infer import compare
  from jisp.tasks.base import PredictOptions
  wd = pathlib.Path(workdir).resolve()
  data = prepare_data(raw_dir, test_names, wd)
  facts = {}
  for name in systems or SYSTEMS:
    cfg, ovr = SYSTEMS[name]
    run_dir = wd / "runs" / name
    common = [f"--config.data.dir={data}", f"--config.num_steps={NEVER}",
              "--config.log_every=5", f"--config.eval_every={NEVER}",
              f"--config.checkpoint_every={NEVER}"]
    print(f"compare_benchmark: training {name} ({cfg}) for {cpu_seconds:.0f} CPU s",
          flush=True)
    facts[name] = train_for_cpu(cfg, run_dir, cpu_seconds, common + ovr)
    print(f"compare_benchmark: {name}: {facts[name]}", flush=True)
  workdirs = [wd / "runs" / n for n in facts]
  methods = compare.load_methods(workdirs)
  methods += compare.load_methods((), ["upi"], compare.comparison_protocol(methods, None, data))
  results, figure = compare.compare(methods, data, options=PredictOptions(steps=steps, eta=eta),
                                    max_batch=max_batch, progress=True,
                                    log=lambda m: print(m, flush=True))
  paths = compare.write_outputs(wd / "compare", results, figure)
  summary = {"raw_dir": str(raw_dir), "test": list(test_names), "cpu_seconds": cpu_seconds,
             "cpu_count": os.cpu_count(), "training": facts, "compare": paths}
  atomic_write_json(wd / "benchmark.json", summary)
  print(compare.markdown_table(results))
  return summary


def main(argv=None) -> int:
  from jisp.core import hostenv
  hostenv.configure()  # the comparison runs in this process: its devices, before jax
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--raw-dir", required=True)
  ap.add_argument("--test", action="append", required=True, help="test file name(s)")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--cpu-seconds", type=float, default=360.0)
  ap.add_argument("--systems", default=None, help="comma-separated subset of "
                                                  f"{','.join(SYSTEMS)}")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--eta", type=float, default=1.0)
  args = ap.parse_args(argv)
  systems = args.systems.split(",") if args.systems else None
  run(args.raw_dir, args.test, args.workdir, args.cpu_seconds, systems=systems,
      steps=args.steps, eta=args.eta)
  return 0


if __name__ == "__main__":
  sys.exit(main())
