"""Leave one camera out: each learned sRGB -> RAW method against UPI on a camera it never saw.

    python -m jisp.experiments.loco --raw-dir ../shared/data/raw --workdir W --cpu-seconds 300

For every camera C among the RAW files of --raw-dir (grouped by the camera name LibRaw
reads):
  data    the other cameras' files, symlinked into W/C/train_raw, prepared by the library of
          `jisp prepare` (invisp protocol, 64 px patches, stride 32, all files train);
          C's own files symlinked into W/C/test_raw
  train   every method on W/C/data (by default mixed with virtual-camera pairs:
          data.source=mixed), its camera prior undoing the render's tone by --prior-tone
          (prior.tone / dtdm.upi_tone: "render", the protocol's own curve, by default; "upi",
          Brooks et al.'s model), for the same CPU time: a short calibration run measures the
          CPU seconds of one training step inside the process (`cpu_s` of metrics.jsonl
          between two logged steps after the first, so start-up and compilation are not
          counted), and the run then gets the steps that fit --cpu-seconds, so its
          learning-rate schedule runs to its end (SSDNet takes the others' warm-up-cosine
          schedule and EMA for it, SSDNET_RECIPE, and starts its residual head at zero,
          prior.zero_init); the run's own steps are measured the same way and recorded
  test    `jisp eval` of each run on W/C/test_raw: each test file's own metadata reaches
          the methods that take the camera (prior.mode, dtdm.upi_profile=camera), and the
          two baselines with that metadata and no learning: `jisp eval --method upi`
          (Brooks et al.'s unprocessing) and `--method upi_render` (the same with the
          protocol's render curve in place of Brooks et al.'s tone model)
Writes W/loco.json (every number, CPU seconds per run, the commands) and W/loco.md (RAW
PSNR per held-out camera and method, and each method's margins over both baselines).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

from jisp.core.fileio import atomic_write_json, atomic_write_text

# SSDNet's own schedule (Restormer's: constant, then a cosine over a fixed length) would
# stop a budgeted run part-way down its cosine; the others' recipe instead: warm-up, a
# cosine that ends at the run's last step, and their EMA.
SSDNET_RECIPE = ["--config.optim.schedule=warmup_cosine", "--config.optim.warmup_steps=20",
                 "--config.optim.ema_decay=0.99"]
# name -> (config, overrides, eval options); tiny configs with the camera as an input.
METHODS = {
    "regression": ("regression_rgb2raw_tiny.py:prior=both", [], []),
    "ssdnet": ("ssdnet_tiny.py:prior=residual", ["--config.stages=()", *SSDNET_RECIPE,
                                                  "--config.prior.zero_init=true"], []),
    "ddpm": ("ddpm_tiny.py:prior=both,prediction=x0", [],
             ["--sampler", "dpm_solver", "--steps", "10"]),
    # the network as a residual over the DTDM's own estimate, its output conv at zero
    "dtdm": ("dtdm_rgb2raw_tiny.py:prediction=residual", ["--config.dtdm.upi_profile=camera"],
             ["--steps", "10"]),
}
# Run only when named (--methods): the DDPM as it was trained before x0-prediction
# (v-prediction over the same residual prior), to measure what that choice is worth.
ABLATIONS = {
    "ddpm_v": ("ddpm_tiny.py:prior=both", [], ["--sampler", "dpm_solver", "--steps", "10"]),
}
ABLATIONS["ssdnet_torch_head"] = (   # its residual head at PyTorch's init, not zero
    "ssdnet_tiny.py:prior=residual", ["--config.stages=()", *SSDNET_RECIPE], [])
# the DTDM's network predicting the paper's f = gamma_s (x - y) + eps
ABLATIONS["dtdm_f"] = ("dtdm_rgb2raw_tiny.py", ["--config.dtdm.upi_profile=camera"],
                       ["--steps", "10"])
# the residual DTDM at a third of the tiny configs' peak learning rate: does its network
# leave the estimate it starts from too fast?
ABLATIONS["dtdm_low_lr"] = (METHODS["dtdm"][0], [*METHODS["dtdm"][1],
                                                 "--config.optim.peak_lr=3e-4"], ["--steps", "10"])
KNOWN = {**METHODS, **ABLATIONS}
BASELINES = ("upi", "upi_render")   # jisp.train.runs.BASELINES, no training
TONES = ("render", "upi")             # jisp.isp.tone.TONE_MODELS, the --prior-tone choices
# the calibration run's logged steps whose CPU difference is measured: after the first
# step (compilation) and its warm-up, long enough to dwarf the timer's noise
CALIBRATION_STEPS = (20, 80)
RUN_LOG_EVERY = 50
PATCH = 64


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _jisp(*args, log=None) -> tuple[float, float]:
  """Runs `jisp ARGS` in a subprocess; (CPU seconds, wall seconds) it used."""
  c0, t0 = _cpu(), time.time()
  p = subprocess.run([sys.executable, "-m", "jisp", *map(str, args)], capture_output=True,
                     text=True)
  if p.returncode != 0:
    raise RuntimeError(f"jisp {' '.join(map(str, args))} failed ({p.returncode}):\n"
                       f"{p.stderr[-3000:]}")
  if log:
    log(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "")
  return _cpu() - c0, time.time() - t0


def cameras_of(raw_dir) -> dict[str, list[pathlib.Path]]:
  """{camera name: its RAW files} of a folder (files LibRaw cannot read are left out)."""
  from jisp.data import prepare, raw_io
  out: dict[str, list[pathlib.Path]] = {}
  for p in prepare.list_raw_files(pathlib.Path(raw_dir)):
    try:
      out.setdefault(raw_io.read_capture(p).camera, []).append(p.resolve())
    except (OSError, raw_io.RawFormatError):
      continue
  return out


def _links(folder: pathlib.Path, files) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for f in files:
    link = folder / f.name
    if not link.exists():
      link.symlink_to(f)
  return folder


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def step_cpu(workdir: pathlib.Path, first: int = 0) -> tuple[float, int]:
  """(CPU seconds, steps) between the first train record at a step >= `first` and the last
  of a run's metrics.jsonl (the loop's `cpu_s`: this process's CPU, all threads), within
  the last process that trained it (a resume restarts the count)."""
  recs = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()
          if ln.strip()]
  resumes = [i for i, r in enumerate(recs) if r.get("event") == "resume"]
  recs = recs[resumes[-1] + 1:] if resumes else recs
  train = [r for r in recs if "cpu_s" in r and r["step"] >= first]
  if len(train) < 2:
    raise RuntimeError(f"{workdir}: fewer than two logged steps with cpu_s")
  return train[-1]["cpu_s"] - train[0]["cpu_s"], train[-1]["step"] - train[0]["step"]


def train_for_budget(config, workdir: pathlib.Path, overrides, cpu_seconds: float,
                     log=print) -> dict:
  """Calibrates CPU seconds per step, then trains `config` for the steps that fit."""
  start, end = CALIBRATION_STEPS
  calib = workdir.parent / f"{workdir.name}.calib"
  shutil.rmtree(calib, ignore_errors=True)  # a fresh process: no resume of an older one
  _jisp("train", "--config", config, "--workdir", calib, *overrides,
        f"--config.log_every={start}", "--config.eval_every=1000000",
        "--config.checkpoint_every=1000000", f"--config.num_steps={end}")
  cpu, n = step_cpu(calib, start)
  per_step = max(cpu / n, 1e-4)
  steps = max(end, int(cpu_seconds / per_step))
  log(f"loco: {workdir.name}: {per_step:.3f} CPU s/step -> {steps} steps")
  done = workdir / "checkpoints"
  cpu, wall = _jisp("train", "--config", config, "--workdir", workdir, *overrides,
                    f"--config.num_steps={steps}", f"--config.log_every={RUN_LOG_EVERY}",
                    f"--config.checkpoint_every={steps}", f"--config.eval_every={steps}",
                    log=log)
  run_cpu, run_n = step_cpu(workdir, RUN_LOG_EVERY)
  return {"config": str(config), "overrides": list(overrides), "steps": steps,
          "cpu_s_per_step": per_step, "cpu_s_per_step_run": run_cpu / run_n,
          "cpu_s_training": run_cpu / run_n * steps, "cpu_s_run": cpu, "wall_s_run": wall,
          "checkpoints": str(done)}


def evaluate(args, out: pathlib.Path) -> dict:
  _jisp("eval", *args, "--out", out, "--no-progress")
  with open(out / "results.json") as f:
    r = json.load(f)
  return {"raw_psnr": r["mean_raw_psnr"],
          "per_image": {pathlib.Path(i["file"]).name: next(iter(i["results"].values()))[
              "raw_psnr"] for i in r["images"]},
          "seconds_per_image": r["seconds_per_image"]}


def tone_overrides(config: str, tone: str) -> list[str]:
  """The config override that sets how a method's camera prior undoes the render's tone."""
  key = "dtdm.upi_tone" if config.startswith("dtdm") else "prior.tone"
  return [f"--config.{key}={tone}"]


def run(raw_dir, workdir, cpu_seconds: float, *, methods=None, cameras=None,
        virtual_ratio: float = 0.5, prior_tone: str = "render", log=print) -> dict:
  from jisp.core.errors import DataError, OptionError
  from jisp.data import prepare
  names = methods or list(METHODS)
  unknown = [m for m in names if m not in KNOWN]
  if unknown:
    raise OptionError(f"--methods {','.join(unknown)}: expected a subset of {','.join(KNOWN)}")
  if prior_tone not in TONES:
    raise OptionError(f"--prior-tone {prior_tone!r}: expected one of {', '.join(TONES)}")
  wd = pathlib.Path(workdir).resolve()
  results: dict = {"raw_dir": str(raw_dir), "cpu_seconds": cpu_seconds,
                   "cpu_count": os.cpu_count(), "virtual_ratio": virtual_ratio,
                   "prior_tone": prior_tone, "cameras": {}}
  summary_path = wd / "loco.json"
  if summary_path.is_file():
    old = json.loads(summary_path.read_text())
    # a table made before the key had Brooks et al.'s tone model in every prior
    if old.get("prior_tone", "upi") != prior_tone:
      raise DataError(f"{summary_path}: its runs were trained with --prior-tone "
                      f"{old.get('prior_tone', 'upi')}, not {prior_tone}: use another --workdir")
    results["cameras"] = old.get("cameras", {})
  groups = cameras_of(raw_dir)
  if len(groups) < 2:
    raise DataError(f"{raw_dir}: leave-one-camera-out needs RAW files of 2 or more cameras, "
                    f"found {sorted(groups) or 'none'}")
  for cam in sorted(groups):
    if cameras and not any(c.lower() in cam.lower() for c in cameras):
      continue
    cdir = wd / _slug(cam)
    train_files = [f for c, fs in groups.items() if c != cam for f in fs]
    train_raw = _links(cdir / "train_raw", train_files)
    test_raw = _links(cdir / "test_raw", groups[cam])
    data = cdir / "data"
    if not (data / "manifest.json").is_file():
      prepare.prepare(train_raw, data, protocol="invisp", patch=PATCH, stride=PATCH // 2,
                      split=1.0, shards=2, workers=1, progress=False)
    entry = results["cameras"].setdefault(cam, {"train_cameras": sorted(set(groups) - {cam}),
                                                "test_files": [f.name for f in groups[cam]],
                                                "methods": {}})
    for base in BASELINES:
      if base not in entry["methods"]:
        entry["methods"][base] = evaluate(["--method", base, "--data", test_raw],
                                          cdir / f"eval_{base}")
    for name in names:
      if name in entry["methods"]:
        continue
      config, overrides, eval_opts = KNOWN[name]
      common = [f"--config.data.dir={data}", "--config.data.source=mixed",
                f"--config.data.virtual_ratio={virtual_ratio}"]
      log(f"loco: held out {cam}: training {name}")
      try:
        facts = train_for_budget(config, cdir / f"run_{name}",
                                 common + overrides + tone_overrides(config, prior_tone),
                                 cpu_seconds, log)
        facts.update(evaluate(["--workdir", cdir / f"run_{name}", "--data", test_raw,
                               *eval_opts], cdir / f"eval_{name}"))
      except RuntimeError as e:  # a run that fails (diverges) is a cell, not the end
        lines = [ln for ln in str(e).splitlines() if "error:" in ln] or str(e).splitlines()
        entry["methods"][name] = {"error": lines[-1].strip()[:300]}
        log(f"loco: held out {cam}: {name} failed: {entry['methods'][name]['error']}")
        atomic_write_json(summary_path, results)
        continue
      entry["methods"][name] = facts
      log(f"loco: held out {cam}: {name} {facts['raw_psnr']:.2f} dB, UPI "
          f"{entry['methods']['upi']['raw_psnr']:.2f} dB")
      atomic_write_json(summary_path, results)
    atomic_write_json(summary_path, results)
  atomic_write_text(wd / "loco.md", markdown(results))
  return results


def markdown(results: dict) -> str:
  cams = sorted(results["cameras"])
  have = {m for c in cams for m in results["cameras"][c]["methods"]}
  bases = [b for b in BASELINES if b in have]
  methods = sorted(have - set(BASELINES))
  label = {"upi": "UPI", "upi_render": "UPI, render tone"}
  head = "| held-out camera | " + " | ".join([label[b] for b in bases] + methods) + " |"
  lines = [head, "|" + " --- |" * (1 + len(bases) + len(methods))]
  for c in cams:
    ms = results["cameras"][c]["methods"]
    ref = [ms[b]["raw_psnr"] for b in bases]
    cells = [f"{v:.2f}" for v in ref]
    for m in methods:
      if m in ms and "error" in ms[m]:
        cells.append("failed (see loco.json)")
      elif m in ms:
        v = ms[m]["raw_psnr"]
        cells.append(f"{v:.2f} (" + " / ".join(f"{v - r:+.2f}" for r in ref) + ")")
      else:
        cells.append("–")
    lines.append(f"| {c} | " + " | ".join(cells) + " |")
  lines.append("")
  spent = [f["cpu_s_training"] for c in cams for m, f in results["cameras"][c]["methods"].items()
           if "cpu_s_training" in f]
  measured = (f" (their training steps measured {min(spent):.0f}-{max(spent):.0f} s)"
              if spent else "")
  margins = " / ".join(label[b] for b in bases)
  lines.append(f"RAW PSNR (dB, 3x3 tiles) of each held-out camera's files; in brackets the "
               f"margin over {margins}. Each method trained for "
               f"{results['cpu_seconds']:.0f} CPU seconds on {results['cpu_count']} "
               f"cores{measured} on the other cameras' files, virtual_ratio "
               f"{results['virtual_ratio']}, its camera prior with the "
               f"{results.get('prior_tone', 'upi')} tone model.")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--raw-dir", required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--cpu-seconds", type=float, default=300.0)
  ap.add_argument("--methods", default=None, help=f"comma-separated subset of "
                                                  f"{','.join(KNOWN)} (default: "
                                                  f"{','.join(METHODS)})")
  ap.add_argument("--cameras", default=None, help="comma-separated parts of camera names "
                                                  "to hold out (default: every camera)")
  ap.add_argument("--virtual-ratio", type=float, default=0.5)
  ap.add_argument("--prior-tone", default="render", choices=TONES,
                  help="how every method's camera prior undoes the render's tone: the "
                       "protocol's own curve (render, default) or Brooks et al.'s model (upi)")
  args = ap.parse_args(argv)
  res = run(args.raw_dir, args.workdir, args.cpu_seconds,
            methods=args.methods.split(",") if args.methods else None,
            cameras=args.cameras.split(",") if args.cameras else None,
            virtual_ratio=args.virtual_ratio, prior_tone=args.prior_tone)
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
