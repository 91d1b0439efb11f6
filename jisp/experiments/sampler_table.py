"""README "Fast samplers vs DDPM-1000, and tiling", end to end.

    python -m jisp.experiments.sampler_table --workdir W [--steps 6000] [--prepared DIR]

1. Data: the demo's virtual-camera DNGs and `jisp prepare` shards (jisp.experiments.demo's
   data stage, into W/data), unless --prepared names a prepared folder.
2. Model: `jisp train` (a subprocess) of configs/ddpm_tiny.py with v-prediction and EMA
   0.999 on 32x32 patches for --steps steps in W/run; re-running resumes it.
3. Rows: one `jisp eval` subprocess per (sampler row, tiling, seed) on the prepared
   folder's test split, each appended atomically to W/rows.jsonl as it finishes; a
   re-run skips every eval whose command and trained step match a finished line.
4. Prints one JSON line per eval and the README's two markdown tables (also written to
   W/tables.md). Seconds per image are `jisp eval`'s (compile excluded), with the load
   average around each eval recorded next to them: they mean something on a quiet CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from jisp.core.errors import OptionError, RunError, UserError
from jisp.core.fileio import atomic_write_text

CONFIG = "ddpm_tiny.py"
# What the README table's model was: the tiny config's v-prediction with a longer EMA than
# its default (0.99 suits its few-hundred-step demo runs, not a 6k-step one).
TRAIN_OVERRIDES = ("--config.diffusion.prediction=v", "--config.optim.ema_decay=0.999",
                   "--config.data.patch_size=32")
MINUS = "\u2212"


@dataclasses.dataclass(frozen=True)
class Row:
  """A README table row: `jisp eval` sampler flags and the evals it needs.

  evals: (tiling, seed) pairs; tiling "grid", "overlap" (--overlap N) or "report"
  (--tiling-report: grid, overlap, overlap + shared noise in one eval).
  nfe: the network evaluations the row claims (checked against eval's count).
  """
  id: str
  label: str
  args: tuple
  nfe: int
  nfe_label: str
  evals: tuple


def _ddim(steps, eta):
  return ("--sampler", "ddim", "--steps", str(steps), "--eta", str(eta))


ROWS = (
    Row("ddpm1000", "DDPM (ancestral, β̃)", ("--sampler", "ddpm", "--variance", "beta_tilde"),
        1000, "1000", (("grid", 0), ("grid", 1), ("overlap", 0))),
    Row("ddim200_eta1", "DDIM, η = 1", _ddim(200, 1), 200, "200", (("grid", 0),)),
    Row("ddim20_eta1", "DDIM, η = 1", _ddim(20, 1), 20, "20", (("report", 0), ("grid", 1))),
    Row("ddim20_eta0.5", "DDIM, η = 0.5", _ddim(20, 0.5), 20, "20", (("grid", 0),)),
    Row("ddim20_eta0", "DDIM, η = 0", _ddim(20, 0), 20, "20", (("report", 0), ("grid", 1))),
    Row("dpm_solver3", "DPM-Solver-3 (singlestep)",
        ("--sampler", "dpm_solver", "--steps", "19", "--order", "3", "--final-denoise"),
        20, "19 + 1", (("grid", 0), ("overlap", 0))),
    Row("dpm_solver_pp2m", "DPM-Solver++(2M)",
        ("--sampler", "dpm_solver_pp", "--steps", "19", "--final-denoise"),
        20, "19 + 1", (("grid", 0), ("overlap", 0))),
    Row("ddim1", "DDIM, one step (x0 from noise)", ("--sampler", "ddim", "--steps", "1"),
        1, "1", (("grid", 0),)),
    Row("mean2_ddim10_eta1", "mean of two DDIM-10 η = 1 samples",
        (*_ddim(10, 1), "--samples", "2"), 20, "2 × 10", (("grid", 0),)),
)
ROW_IDS = tuple(r.id for r in ROWS)


def eval_key(row: Row, tiling: str, seed: int) -> str:
  return f"{row.id}@{tiling}/seed{seed}"


def eval_args(row: Row, tiling: str, seed: int, overlap: int) -> list[str]:
  """`jisp eval` flags of one eval (without --workdir / --data / --out)."""
  tile = {"grid": ["--grid"], "overlap": ["--overlap", str(overlap)],
          "report": ["--overlap", str(overlap), "--tiling-report"]}[tiling]
  return [*row.args, *tile, "--seed", str(seed)]


# --------------------------------------------------------------------------- rows.jsonl

def read_rows(path) -> list[dict]:
  """The finished evals of W/rows.jsonl (none when it does not exist yet)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise UserError(f"{path}:{n}: not a JSON line ({e.msg}); remove the line to re-run "
                        "that eval") from None
  return out


def append_row(path, record: dict) -> None:
  """Adds (or replaces, by key) one eval record; the file is rewritten atomically, so an
  interrupted run leaves the previous file whole."""
  rows = [r for r in read_rows(path) if r.get("key") != record["key"]]
  rows.append(record)
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------- steps

def _env(workdir: pathlib.Path) -> dict:
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def _jisp(*args) -> list[str]:
  return [sys.executable, "-m", "jisp", *map(str, args)]


def _say(msg: str) -> None:
  print(f"sampler_table: {msg}", file=sys.stderr, flush=True)


def make_data(workdir: pathlib.Path) -> pathlib.Path:
  """The demo's virtual-camera shards in W/data/prepared (kept when already there)."""
  from jisp.experiments import demo
  out = workdir / "data"
  prepared = out / "prepared"
  if (prepared / "manifest.json").is_file():
    _say(f"data: reusing {prepared}")
    return prepared
  demo.stage_data(out, fast=False)
  return prepared


def train_overrides(prepared, steps: int, extra=()) -> list[str]:
  every = max(1, min(500, steps))
  return [f"--config.data.dir={pathlib.Path(prepared).resolve()}",
          f"--config.num_steps={steps}", *TRAIN_OVERRIDES,
          f"--config.checkpoint_every={every}", f"--config.eval_every={every}",
          "--config.log_every=50", *extra]


def train(workdir: pathlib.Path, prepared, steps: int, extra=()) -> int:
  """`jisp train` to `steps` (resuming W/run); returns the step of its last checkpoint."""
  from jisp.train.checkpoint import checkpoint_steps
  run = workdir / "run"
  done = checkpoint_steps(run)
  if done and done[-1] >= steps:
    _say(f"train: {run} already at step {done[-1]}")
    return done[-1]
  cmd = _jisp("train", "--config", CONFIG, "--workdir", run,
              *train_overrides(prepared, steps, extra))
  _say(f"train: {' '.join(cmd[2:])} (output in {workdir / 'train.out'})")
  t0 = time.time()
  with open(workdir / "train.out", "a") as log:
    rc = subprocess.run(cmd, env=_env(workdir), stdout=log, stderr=subprocess.STDOUT).returncode
  done = checkpoint_steps(run)
  if rc != 0 or not done or done[-1] < steps:
    tail = (workdir / "train.out").read_text()[-1500:]
    raise RunError(f"{run}: jisp train exited {rc} at step {done[-1] if done else 0} of "
                   f"{steps} (re-run to resume); last output:\n{tail}")
  _say(f"train: step {done[-1]} in {time.time() - t0:.0f} s")
  return done[-1]


def run_eval(workdir: pathlib.Path, prepared, row: Row, tiling: str, seed: int, overlap: int,
             step: int, max_images=None) -> dict:
  """One `jisp eval`; returns its rows.jsonl record."""
  key = eval_key(row, tiling, seed)
  out = workdir / "evals" / key.replace("@", "_").replace("/", "_")
  args = eval_args(row, tiling, seed, overlap)
  if max_images is not None:
    args += ["--max-images", str(max_images)]
  cmd = _jisp("eval", "--workdir", workdir / "run", "--data", prepared, "--out", out,
              "--json", "--no-progress", *args)
  started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  load0 = os.getloadavg()[0]
  t0 = time.time()
  p = subprocess.run(cmd, env=_env(workdir), capture_output=True, text=True)
  wall = time.time() - t0
  if p.returncode != 0:
    raise RunError(f"{key}: jisp eval exited {p.returncode}: {p.stderr.strip()[-1500:]}")
  res = json.loads([l for l in p.stdout.splitlines() if l.strip()][-1])
  if res["step"] != step:
    raise RunError(f"{key}: jisp eval scored step {res['step']}, expected {step}")
  return {
      "key": key, "row": row.id, "label": row.label, "tiling": tiling, "seed": seed,
      "eval_args": args, "step": step, "protocol": res["protocol"],
      "sampler": res["sampler"], "steps": res["steps"], "sampler_options": res["sampler_options"],
      "nfe": res["nfe"], "nfe_expected": row.nfe, "n_images": res["n_images"],
      "devices": res["devices"],
      "settings": [{"name": s["name"], "raw_psnr": s["mean_raw_psnr"],
                    "raw_psnr_full": s["mean_raw_psnr_full"], "ssim": s["mean_raw_ssim"],
                    "seam_ratio": s["mean_seam_ratio"],
                    "seconds_per_image": s["seconds_per_image"]} for s in res["settings"]],
      "status": "ok", "started": started, "wall_seconds": wall,
      "loadavg_1min": [load0, os.getloadavg()[0]],
  }


def selected_rows(ids=None) -> list[Row]:
  if not ids:
    return list(ROWS)
  unknown = [i for i in ids if i not in ROW_IDS]
  if unknown:
    raise OptionError(f"--rows: unknown row {', '.join(unknown)} (rows: {', '.join(ROW_IDS)})")
  return [r for r in ROWS if r.id in ids]


def run_rows(workdir: pathlib.Path, prepared, step: int, rows, overlap: int,
             max_images=None, seeds=(0, 1)) -> list[dict]:
  """Every eval of `rows` with a seed in `seeds` not finished yet (same command, same
  trained step)."""
  path = workdir / "rows.jsonl"
  for row in rows:
    for tiling, seed in row.evals:
      if seed not in seeds:
        continue
      key = eval_key(row, tiling, seed)
      args = eval_args(row, tiling, seed, overlap)
      if max_images is not None:
        args += ["--max-images", str(max_images)]
      old = {r["key"]: r for r in read_rows(path)}.get(key)
      if old and old.get("status") == "ok" and old.get("step") == step and \
          old.get("eval_args") == args:
        _say(f"{key}: finished earlier, skipped")
        continue
      _say(f"{key}: jisp eval {' '.join(args)}")
      rec = run_eval(workdir, prepared, row, tiling, seed, overlap, step, max_images)
      append_row(path, rec)
      s0 = rec["settings"][0]
      _say(f"{key}: {s0['raw_psnr']:.2f} dB ({s0['name']}), {rec['nfe']} NFE, "
           f"{s0['seconds_per_image']:.2f} s/image")
  return read_rows(path)


# --------------------------------------------------------------------------- tables

def _cells(records, step: int, overlap: int) -> dict:
  """(row id, setting name, seed) -> setting dict of the evals of `step`."""
  cells = {}
  for r in records:
    if r.get("status") != "ok" or r.get("step") != step:
      continue
    for s in r["settings"]:
      cells[(r["row"], s["name"], r["seed"])] = dict(s, nfe=r["nfe"])
  return cells


def _signed(x: float) -> str:
  return f"{x:+.2f}".replace("-", MINUS)


def _secs(s: float) -> str:
  return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


def sampler_markdown(records, step: int, overlap: int, rows=ROWS) -> str:
  """The README's sampler table; cells of evals not finished read "unfinished"."""
  cells = _cells(records, step, overlap)
  ov = f"overlap{overlap}"
  ref = {n: cells.get(("ddpm1000", n, 0)) for n in ("grid", ov)}
  lines = [f"| sampler | NFE | grid tiling | overlap {overlap} px | vs DDPM-1000 "
           "(grid / overlap) | s/image (grid) |", "| --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    tilings = {t for t, _ in row.evals}
    g, g1 = cells.get((row.id, "grid", 0)), cells.get((row.id, "grid", 1))
    o = cells.get((row.id, ov, 0))
    has_ov = bool(tilings & {"overlap", "report"})
    nfe = next((c["nfe"] for c in (g, o, g1) if c), None)
    nfe_text = row.nfe_label if nfe in (None, row.nfe) else f"{nfe} (expected {row.nfe})"
    grid_text = "unfinished" if g is None else f"{g['raw_psnr']:.2f} dB"
    if any(seed == 1 for _, seed in row.evals):
      grid_text += " (seed 1: " + ("unfinished" if g1 is None else f"{g1['raw_psnr']:.2f}") + ")"
    ov_text = "–" if not has_ov else ("unfinished" if o is None else f"{o['raw_psnr']:.2f} dB")
    if row.id == "ddpm1000":
      vs = "–"
    else:
      parts = [_signed(g["raw_psnr"] - ref["grid"]["raw_psnr"]) if g and ref["grid"]
               else "unfinished"]
      if has_ov:
        parts.append(_signed(o["raw_psnr"] - ref[ov]["raw_psnr"]) if o and ref[ov]
                     else "unfinished")
      vs = " / ".join(parts)
    secs = "unfinished" if g is None else _secs(g["seconds_per_image"])
    lines.append(f"| {row.label} | {nfe_text} | {grid_text} | {ov_text} | {vs} | {secs} |")
  return "\n".join(lines)


def tiling_markdown(records, step: int, overlap: int) -> str:
  """The README's tiling table: DDIM-20 eta 1 and eta 0 under the three tilings."""
  cells = _cells(records, step, overlap)
  names = (("grid", "regular grid (paper protocol)"),
           (f"overlap{overlap}", f"overlap {overlap} px, blended"),
           (f"overlap{overlap}+shared", f"overlap {overlap} px + shared initial noise"))
  lines = ["| tiling | DDIM-20 η = 1 | seam ratio | DDIM-20 η = 0 | seam ratio |",
           "| --- | --- | --- | --- | --- |"]
  for name, label in names:
    out = [label]
    for rid in ("ddim20_eta1", "ddim20_eta0"):
      c = cells.get((rid, name, 0))
      out += (["unfinished", "unfinished"] if c is None else
              [f"{c['raw_psnr']:.2f} dB", f"{c['seam_ratio']:.2f}"])
    lines.append("| " + " | ".join(out) + " |")
  return "\n".join(lines)


def json_lines(records, rows, step: int) -> list[str]:
  """One line per eval of `rows` (finished, or marked unfinished)."""
  by_key = {r["key"]: r for r in records if r.get("step") == step}
  out = []
  for row in rows:
    for tiling, seed in row.evals:
      key = eval_key(row, tiling, seed)
      out.append(json.dumps(by_key.get(key) or {"key": key, "row": row.id, "label": row.label,
                                                "tiling": tiling, "seed": seed,
                                                "status": "unfinished"}))
  return out


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jisp.experiments.sampler_table",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="everything goes here (resumable)")
  p.add_argument("--steps", type=int, default=6000, help="training steps")
  p.add_argument("--prepared", default=None,
                 help="a prepared folder to train and evaluate on (default: make the demo's)")
  p.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROW_IDS)}")
  p.add_argument("--overlap", type=int, default=8, help="overlap of the overlapping tilings")
  p.add_argument("--max-images", type=int, default=None, help="evaluate the first N only")
  p.add_argument("--seeds", default="0,1",
                 help="run the evals of these sampling seeds (0: the table, 1: its repeats)")
  p.add_argument("--override", action="append", default=[],
                 help="extra --config.a.b=v for jisp train (repeatable)")
  args = p.parse_args(argv)
  try:
    if args.steps < 1:
      raise OptionError(f"--steps must be >= 1, got {args.steps}")
    rows = selected_rows(args.rows.split(",") if args.rows else None)
    try:
      seeds = tuple(int(x) for x in args.seeds.split(","))
    except ValueError:
      raise OptionError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    workdir = pathlib.Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = pathlib.Path(args.prepared).resolve() if args.prepared else make_data(workdir)
    if not (prepared / "manifest.json").is_file():
      raise OptionError(f"--prepared {prepared}: no manifest.json (a `jisp prepare` folder)")
    step = train(workdir, prepared, args.steps, args.override)
    records = run_rows(workdir, prepared, step, rows, args.overlap, args.max_images, seeds)
  except UserError as e:
    print(f"sampler_table: error: {e}", file=sys.stderr)
    return e.exit_code
  tables = sampler_markdown(records, step, args.overlap, rows) + "\n\n" + \
      tiling_markdown(records, step, args.overlap)
  atomic_write_text(workdir / "tables.md", tables + "\n")
  for line in json_lines(records, rows, step):
    print(line)
  print()
  print(tables, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
