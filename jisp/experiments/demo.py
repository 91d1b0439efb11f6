"""`jisp demo`: a real end-to-end run on data made offline, every stage on this machine.

Stages (run in order; `--only NAME` runs one, reusing what earlier stages left in OUT):
  data   virtual camera -> DNG files -> rawpy -> `jisp prepare` shards (invisp protocol)
  train  the conditional DDPM (tiny config) trained from those shards
  reconstruct  a held-out camera JPEG -> DNG with the trained model (DDIM eta=1, 20 NFE),
         rendered back by LibRaw against the JPEG (the look round trip), then the eval
         protocol on the held-out split: results.json and report.png
  dtdm   DTDM for sRGB -> RAW (tiny), started from UPI's cheap RAW estimate (s=100; the
         demo samples 25 strided steps), evaluated on a held-out image
  flow   the invertible flow ISP (InvISP, tiny) trained on the same shards with the JPEG
         simulator; eval renders held-out RAW, stores a real JPEG, inverts it
  ssdnet SSDNet with soft supervision (tiny, 3-channel InvISP-protocol head, one 32 px
         stage; --fast: plain L1, 16 px) trained on the same shards (evaluated by the
         compare stage)
  compare  `jisp compare` of every run the demo trained plus UPI (each test file's own
         camera metadata) on the same held-out image: OUT/compare/compare.{md,json,png}

Every stage calls the library (jisp.data.prepare, jisp.train.loop, jisp.infer) directly;
configs are the packaged ones, so an installed wheel runs the demo.
"""
from __future__ import annotations

import os
import pathlib
import time
from pathlib import Path

import jax

from jisp.core import images
from jisp.core.config import load
from jisp.core.errors import OptionError
from jisp.core.fileio import load_manifest
from jisp.infer import compare, evaluate, reconstruct
from jisp.infer.predict import PatchPredictor
from jisp.tasks.base import PredictOptions
from jisp.train import runs
from jisp.train.loop import train

# The best of the 20-NFE settings measured (README "Fast samplers").
DDPM_OPTIONS = PredictOptions(sampler="ddim", steps=20, eta=1.0)


def stage_data(out: pathlib.Path, fast: bool) -> None:
  from jisp.data import prepare, virtual_camera
  n = 6 if fast else 10
  raws = virtual_camera.write_virtual_raw_dir(out / "raw", n_images=n, seed=0,
                                              size=256 if fast else 384)
  print(f"demo/data: {len(raws)} virtual-camera DNGs in {out / 'raw'}")
  man = prepare.prepare(out / "raw", out / "prepared", protocol="invisp", patch=64, stride=32,
                        split=0.8, shards=2, workers=2, progress=False)
  c = man["counts"]
  print(f"demo/data: prepared {man['n_ok']} files ({c.get('train', {}).get('patches', 0)} train / "
        f"{c.get('test', {}).get('patches', 0)} test patches), skipped {man['n_skipped']}: "
        f"{out / 'prepared' / 'manifest.json'}")


def _train_tiny(out: pathlib.Path, config: str, run_name: str, steps: int,
                log_every: int = 20, overrides=()) -> pathlib.Path:
  """Trains a packaged tiny config on the demo shards with the one train loop."""
  run = out / "runs" / run_name
  cfg = load(config, [
      f"--config.data.dir={out / 'prepared'}", f"--config.num_steps={steps}",
      f"--config.log_every={log_every}", f"--config.checkpoint_every={max(1, steps // 2)}",
      f"--config.eval_every={max(1, steps // 2)}", *overrides])
  res = train(cfg, str(run))
  print(f"demo: {config} trained to step {res['step']} ({res['params']:,} params): {run}")
  return run


def _heldout_jpegs(out: pathlib.Path) -> list[pathlib.Path]:
  """The camera's own rendering of each held-out file, saved as a real JPEG q90."""
  from jisp.data import raw_io
  man = load_manifest(out / "prepared")
  dest = out / "heldout"
  dest.mkdir(exist_ok=True)
  jpgs = []
  for f in man["files"]:
    if f["status"] == "ok" and f.get("split") == "test":
      path = pathlib.Path(f["path"])
      if not path.is_absolute():
        path = pathlib.Path(man.get("raw_dir", out / "raw")) / path
      jpg = dest / (path.stem + ".jpg")
      jpg.write_bytes(images.encode_jpeg(raw_io.render_srgb(path), 90))
      jpgs.append(jpg)
  return jpgs


def _eval(out: pathlib.Path, run: runs.Run, stage: str, options=None,
          max_images: int = 2) -> dict:
  """The `jisp eval` protocol on the demo's held-out split; writes results and report."""
  files, protocol, _ = evaluate.eval_files(out / "prepared", run.config)
  files = files[:max_images]
  if run.task.io.direction == "both":
    results, rows = evaluate.evaluate_roundtrip(run, files, protocol)
  else:
    predictor = PatchPredictor(run.task, run.params, options)
    settings = evaluate.tilings(predictor.patch)
    results, rows = evaluate.evaluate(run, predictor, files, protocol, settings)
  paths = evaluate.write_results(Path(run.workdir) / "eval", results, rows, out / "prepared")
  for line in evaluate.summary_lines(results):
    print(f"demo/{stage}: {line}")
  print(f"demo/{stage}: report {paths['report']}, numbers {paths['results']}")
  return results


def stage_train(out: pathlib.Path, fast: bool) -> None:
  _train_tiny(out, "ddpm_tiny.py", "ddpm", 60 if fast else 600)


def stage_reconstruct(out: pathlib.Path, fast: bool) -> None:
  run = runs.load_run(out / "runs" / "ddpm")
  predictor = PatchPredictor(run.task, run.params, DDPM_OPTIONS)
  jpgs = _heldout_jpegs(out)[:1]
  tile = reconstruct.make_tiling(predictor.patch)
  profile, desc = reconstruct.camera_profile(run.config)
  print(f"demo/reconstruct: {predictor.describe()}, {tile.name}, camera: {desc}")
  failed = reconstruct.reconstruct_files(run, predictor, jpgs, out / "reconstructed", tile,
                                         profile=profile,
                                         protocol=reconstruct.data_protocol(run.config),
                                         check=True,  # the look round trip: LibRaw renders it
                                         log=lambda m: print(f"demo/reconstruct: {m}"))
  if failed:
    raise RuntimeError("demo/reconstruct: a held-out JPEG could not be reconstructed")
  _eval(out, run, "reconstruct", DDPM_OPTIONS)


def stage_dtdm(out: pathlib.Path, fast: bool) -> None:
  run = runs.load_run(_train_tiny(out, "dtdm_rgb2raw_tiny.py", "dtdm", 40 if fast else 300))
  # 25 strided reverse steps from s=100 keep the demo within its time budget.
  _eval(out, run, "dtdm", PredictOptions(steps=25), max_images=1)


def stage_flow(out: pathlib.Path, fast: bool) -> None:
  run = runs.load_run(_train_tiny(out, "invisp_tiny.py", "flow", 40 if fast else 150))
  _eval(out, run, "flow")


def stage_ssdnet(out: pathlib.Path, fast: bool) -> None:
  steps = 20 if fast else 100
  # One stage (the tiny config's second, 48 px stage would compile a second step) and one
  # eval, at the end: SSDNet's compiles are the slow part on a CPU. --fast trains with the
  # plain clipped L1 (no sigma head to compile) on 16 px patches; the full demo with
  # soft supervision (training-resampling) on 32 px.
  patch = 16 if fast else 32
  extra = ["--config.soft.strategy=plain", "--config.eval_batches=1"] if fast else []
  _train_tiny(out, "ssdnet_tiny.py", "ssdnet", steps, overrides=[
      f"--config.stages=(({steps}, {patch}, 8),)", f"--config.data.patch_size={patch}",
      "--config.optim.constant_steps=0", f"--config.optim.cosine_steps={steps}",
      f"--config.eval_every={steps}", f"--config.checkpoint_every={steps}", *extra])


# Every sampling method runs these settings in the comparison (the DDPM stage's DDIM-20
# eta=1; DTDM reads steps and eta as its own strided chain's).
COMPARE_OPTIONS = PredictOptions(steps=20, eta=1.0)
COMPARE_RUNS = ("ddpm", "dtdm", "flow", "ssdnet")


def stage_compare(out: pathlib.Path, fast: bool) -> None:
  del fast
  workdirs = [out / "runs" / n for n in COMPARE_RUNS if (out / "runs" / n).is_dir()]
  methods = compare.load_methods(workdirs)
  protocol = compare.comparison_protocol(methods, data_dir=out / "prepared")
  methods += compare.load_methods((), ["upi"], protocol)
  results, figure = compare.compare(methods, out / "prepared", protocol=protocol,
                                    options=COMPARE_OPTIONS, max_images=1, progress=False,
                                    log=lambda m: print(f"demo/compare: {m}"))
  paths = compare.write_outputs(out / "compare", results, figure)
  print(compare.markdown_table(results).split("\n\n")[0])
  print(f"demo/compare: table {paths['md']}, figure {paths['png']}")
  failed = [r["name"] for r in results["methods"] if r["status"] != "ok"]
  if failed:
    raise RuntimeError(f"demo/compare: {', '.join(failed)} failed (see {paths['md']})")


STAGES = {
    "data": stage_data,
    "train": stage_train,
    "reconstruct": stage_reconstruct,
    "dtdm": stage_dtdm,
    "flow": stage_flow,
    "ssdnet": stage_ssdnet,
    "compare": stage_compare,
}


def _compilation_cache(outp: pathlib.Path) -> None:
  """JAX's persistent compilation cache under OUT (unless the user set one): a stage that
  compiles what an earlier stage or run compiled (the comparison's predictors) reads it."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(outp / "jax_cache"))


def run(out: str, only: str | None = None, fast: bool = False) -> int:
  if only is not None and only not in STAGES:
    raise OptionError(f"unknown stage {only!r} (stages: {', '.join(STAGES)})")
  outp = pathlib.Path(out).resolve()
  outp.mkdir(parents=True, exist_ok=True)
  _compilation_cache(outp)
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
