"""`jisp demo`: a real end-to-end run on data made offline, every stage on this machine.

Stages (run in order; `--only NAME` runs one, reusing what earlier stages left in OUT):
  data   virtual camera -> DNG files -> rawpy -> `jisp prepare` shards (invisp protocol)
  train  the conditional DDPM (tiny config) trained from those shards
  reconstruct  a held-out camera JPEG -> DNG with the trained model (DDIM eta=1, 20 NFE),
         then `jisp eval` on the held-out split: results.json and report.png
  dtdm   DTDM for sRGB -> RAW (tiny), started from UPI's cheap RAW estimate (s=100; the
         demo samples 25 strided steps); `jisp eval` on a held-out image
  flow   the invertible flow ISP (InvISP, tiny) trained on the same shards with the JPEG
         simulator; eval renders held-out RAW, stores a real JPEG q90, inverts it
"""
from __future__ import annotations

import pathlib
import sys
import time

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config_path(name: str) -> pathlib.Path:
  p = REPO_CONFIGS / name
  if not p.is_file():
    raise FileNotFoundError(f"demo needs {p} (run jisp demo from a source checkout)")
  return p


def stage_data(out: pathlib.Path, fast: bool) -> None:
  from jisp.data import prepare, virtual_camera
  n = 6 if fast else 10
  raws = virtual_camera.write_virtual_raw_dir(out / "raw", n_images=n, seed=0, size=256 if fast else 384)
  print(f"demo/data: {len(raws)} virtual-camera DNGs in {out / 'raw'}")
  man = prepare.prepare(out / "raw", out / "prepared", protocol="invisp", patch=64, stride=32,
                        split=0.8, shards=2, workers=2, progress=False)
  c = man["counts"]
  print(f"demo/data: prepared {man['n_ok']} files ({c.get('train', {}).get('patches', 0)} train / "
        f"{c.get('test', {}).get('patches', 0)} test patches), skipped {man['n_skipped']}: "
        f"{out / 'prepared' / 'manifest.json'}")


def stage_train(out: pathlib.Path, fast: bool) -> None:
  from jisp import config_utils
  from jisp.train.loop import train
  steps = 60 if fast else 600
  cfg = config_utils.load(_config_path("ddpm_tiny.py"), [
      f"--config.data.dir={out / 'prepared'}", f"--config.num_steps={steps}",
      "--config.log_every=20", f"--config.checkpoint_every={steps // 2}",
      f"--config.eval_every={steps // 2}"])
  res = train(cfg, str(out / "runs" / "ddpm"))
  print(f"demo/train: DDPM trained to step {res['step']} ({res['params']:,} params): "
        f"{out / 'runs' / 'ddpm'}")


def _heldout_jpegs(out: pathlib.Path) -> list[pathlib.Path]:
  """The camera's own rendering of each held-out file, saved as a real JPEG q90."""
  import json
  from PIL import Image
  from jisp.data import raw_io
  man = json.loads((out / "prepared" / "manifest.json").read_text())
  dest = out / "heldout"
  dest.mkdir(exist_ok=True)
  jpgs = []
  for f in man["files"]:
    if f["status"] == "ok" and f.get("split") == "test":
      path = pathlib.Path(f["path"])
      if not path.is_absolute():
        path = pathlib.Path(man.get("raw_dir", out / "raw")) / path
      jpg = dest / (path.stem + ".jpg")
      Image.fromarray(raw_io.render_srgb(path)).save(jpg, quality=90)
      jpgs.append(jpg)
  return jpgs


def stage_reconstruct(out: pathlib.Path, fast: bool) -> None:
  from jisp.cli import main
  run = out / "runs" / "ddpm"
  jpgs = _heldout_jpegs(out)[:1]
  # The best 20-NFE setting measured against DDPM-1000 (README "Fast samplers").
  sampling = ["--sampler", "ddim", "--steps", "20", "--eta", "1"]
  rc = main(["reconstruct", "--workdir", str(run), *map(str, jpgs), "-o", str(out / "reconstructed"),
             *sampling])
  if rc != 0:
    raise RuntimeError(f"demo/reconstruct: jisp reconstruct failed ({rc})")
  print(f"demo/reconstruct: {jpgs[0].name} -> {out / 'reconstructed' / (jpgs[0].stem + '.dng')}")
  rc = main(["eval", "--workdir", str(run), "--data", str(out / "prepared"), *sampling,
             "--max-images", "2"])
  if rc != 0:
    raise RuntimeError(f"demo/reconstruct: jisp eval failed ({rc})")
  print(f"demo/reconstruct: eval report {run / 'eval' / 'report.png'}, "
        f"numbers {run / 'eval' / 'results.json'}")


def _train_tiny(out: pathlib.Path, config: str, run_name: str, steps: int) -> pathlib.Path:
  """Trains a tiny config on the demo shards with the one train loop; returns the run dir."""
  from jisp import config_utils
  from jisp.train.loop import train
  run = out / "runs" / run_name
  cfg = config_utils.load(_config_path(config), [
      f"--config.data.dir={out / 'prepared'}", f"--config.num_steps={steps}",
      "--config.log_every=20", f"--config.checkpoint_every={steps}", f"--config.eval_every={steps}"])
  train(cfg, str(run))
  return run


def _eval(out: pathlib.Path, run: pathlib.Path, stage: str, *extra: str) -> None:
  from jisp.cli import main
  rc = main(["eval", "--workdir", str(run), "--data", str(out / "prepared"), *extra])
  if rc != 0:
    raise RuntimeError(f"demo/{stage}: jisp eval failed ({rc})")


def stage_dtdm(out: pathlib.Path, fast: bool) -> None:
  run = _train_tiny(out, "dtdm_rgb2raw_tiny.py", "dtdm", 40 if fast else 300)
  # 25 strided reverse steps from s=100 keep the demo within its time budget.
  _eval(out, run, "dtdm", "--max-images", "1", "--steps", "25")
  print(f"demo/dtdm: DTDM run {run}; report {run / 'eval' / 'report.png'}")


def stage_flow(out: pathlib.Path, fast: bool) -> None:
  run = _train_tiny(out, "invisp_tiny.py", "flow", 40 if fast else 150)
  _eval(out, run, "flow", "--max-images", "2")
  print(f"demo/flow: flow ISP run {run}; JPEG round-trip report {run / 'eval' / 'report.png'}")


STAGES = {
    "data": stage_data,
    "train": stage_train,
    "reconstruct": stage_reconstruct,
    "dtdm": stage_dtdm,
    "flow": stage_flow,
}


def run(out: str, only: str | None = None, fast: bool = False) -> int:
  outp = pathlib.Path(out).resolve()
  outp.mkdir(parents=True, exist_ok=True)
  if only is not None and only not in STAGES:
    print(f"jisp demo: error: unknown stage {only!r} (stages: {', '.join(STAGES)})", file=sys.stderr)
    return 2
  t_all = time.time()
  for name, fn in STAGES.items():
    if only is not None and name != only:
      continue
    t0 = time.time()
    print(f"== demo stage {name} ==", flush=True)
    fn(outp, fast)
    print(f"== demo stage {name} done in {time.time() - t0:.0f}s ==", flush=True)
  print(f"jisp demo: finished in {time.time() - t_all:.0f}s; everything is under {outp}")
  return 0
