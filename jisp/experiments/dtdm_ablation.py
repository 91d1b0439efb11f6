"""DTDM vs plain DDPM at equal training steps on the same data (DiffRAW's Fig. 4 claim).

Arms, all on the same held-out patches, the same network size and training steps:
  estimate    x itself (G(w) for raw2rgb, the cheap estimator for rgb2raw): no sampling
  dtdm        DTDM, s reverse steps from x_s (the paper: 100)
  ddpm_xs     plain DDPM (trained over all T, same net and inputs) from the noised estimate
              x_s = sqrt(ab_s) x + sqrt(1 - ab_s) eps, the same s steps
  ddpm_noise  the same DDPM from pure noise, `noise_steps` steps (default: all T)
For raw2rgb with estimator="regression" the colour network G is trained first (same steps).
PSNR in dB per patch in [0, 1], then averaged; seconds per image = sampling wall time of
the whole eval batch / number of patches (one image = one patch), compile time apart.

  python -m jisp.experiments.dtdm_ablation --out runs/ablation --steps 2000 [--direction raw2rgb]
      [--estimator regression|upi] [--n-eval 32] [--noise-steps 2000] [--data-dir D]
      [--no-clip] [--config.x=y ...]

Re-running with the same --out reuses finished trainings (the loop resumes from the last
checkpoint, which is the end) and only re-evaluates; ablation.json holds the last run
(ablation_noclip.json with --no-clip).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

CONFIGS = {"raw2rgb": "dtdm_raw2rgb_tiny.py", "rgb2raw": "dtdm_rgb2raw_tiny.py"}
_NET_BLOCKS = ("model", "optim", "dtdm", "diffusion", "sampling")
G_CONFIGS = {"raw2rgb": "regression_raw2rgb_tiny.py", "rgb2raw": "regression_rgb2raw_tiny.py"}


def _train(config_path, overrides, workdir):
  from jisp.core.config import load
  from jisp.train.loop import train
  cfg = load(config_path, overrides)
  train(cfg, workdir)
  return cfg


def _psnr(a, b):
  from jisp.core import metrics
  return float(metrics.batch_psnr(a, b))


def _timed(fn, *args):
  """(compile seconds, run seconds, output) of a jitted fn, compile and run apart."""
  import jax
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  t1 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return t1 - t0, time.perf_counter() - t1, out


def run(workdir_root, steps=300, *, direction="raw2rgb", estimator=None, n_eval=32,
        noise_steps=None, data_dir="", seed=0, clip_x0=True, overrides=(), log=print
        ) -> dict:
  """Train DTDM and DDPM (and G when needed) for `steps` each, evaluate the four arms.

  estimator: "regression" (default for raw2rgb: a trained G) or "upi" (default for
  rgb2raw). clip_x0: every arm clips the clean-image prediction of each network call to
  the data range (DDPM's usual clip_denoised; off = the papers' equations as printed).
  Returns (and writes to WORKDIR_ROOT/ablation.json) a dict with per-arm psnr,
  sec_per_image, nfe and compile_s.
  """
  import jax
  import numpy as np
  from jisp.core import sharding
  from jisp.core.fileio import atomic_write_json
  from jisp.tasks.base import PredictOptions
  from jisp.train import runs as runs_lib, sources

  if direction not in CONFIGS:
    raise ValueError(f"direction must be one of {sorted(CONFIGS)}, got {direction!r}")
  estimator = estimator or ("regression" if direction == "raw2rgb" else "upi")
  root = os.path.abspath(workdir_root)
  os.makedirs(root, exist_ok=True)
  common = [f"--config.num_steps={int(steps)}", f"--config.seed={seed}", *overrides]
  if data_dir:
    common.append(f"--config.data.dir={data_dir}")

  est_over = [f"--config.dtdm.estimator={estimator}"]
  if estimator == "regression":
    g_dir = os.path.join(root, "estimator")
    log(f"[ablation] training the estimator ({direction}) in {g_dir}")
    # G shares the run-level and data settings, not the diffusion net's blocks.
    g_over = [o for o in common
              if not o.split("=")[0].startswith(tuple(f"--config.{b}." for b in _NET_BLOCKS))]
    _train(G_CONFIGS[direction], g_over, g_dir)
    est_over.append(f"--config.dtdm.estimator_workdir={g_dir}")

  runs = {}
  for process in ("dtdm", "ddpm"):
    wd = os.path.join(root, process)
    log(f"[ablation] training {process} in {wd}")
    _train(CONFIGS[direction], common + est_over + [f"--config.dtdm.process={process}"], wd)
    run = runs_lib.load_run(wd)
    runs[process] = (run.task, jax.device_get(run.params))

  # Held-out patches, sharded over the mesh when the count allows (both cores sample).
  cfg = runs["dtdm"][0].config
  src = sources.make_source(cfg, "test", local_batch=n_eval, process_index=0,
                            process_count=1, train=False)
  batch = src.next()
  src.close()
  mesh = sharding.make_mesh()
  if n_eval % jax.device_count() == 0:
    gbatch = sharding.to_global(batch, mesh)
    # Params replicated on the same mesh (a restore may leave them on one device).
    runs = {k: (t, jax.device_put(p, sharding.replicated(mesh))) for k, (t, p) in runs.items()}
  else:
    gbatch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
  task_d = runs["dtdm"][0]
  cond, target = gbatch[task_d.cond_key], batch[task_d.target_key]
  key = jax.random.PRNGKey(seed + 7)

  s, T = task_d.s, task_d.schedule.num_timesteps
  noise_steps = T if noise_steps is None else int(noise_steps)
  arms = {}
  x = np.asarray(task_d.estimate(cond))
  arms["estimate"] = {"psnr": _psnr(x, target), "nfe": 0}
  plan = [("dtdm", "dtdm", dict()),
          ("ddpm_xs", "ddpm", dict(start="estimate")),
          ("ddpm_noise", "ddpm", dict(steps=noise_steps, start="noise"))]
  for name, process, kw in plan:
    task, params = runs[process]
    opts = task.resolve_options(PredictOptions(clip_x0=clip_x0, **kw))
    fn = jax.jit(lambda p, c, r, t=task, o=opts: t.predict(p, c, r, o))
    compile_s, run_s, out = _timed(fn, params, cond, key)
    arms[name] = {"psnr": _psnr(np.asarray(out), target), "nfe": task.nfe(opts),
                  "sec_per_image": run_s / n_eval, "compile_s": compile_s}
    log(f"[ablation] {name}: {arms[name]}")

  result = {"direction": direction, "estimator": estimator, "train_steps": int(steps),
            "s": s, "T": T, "patch": int(cfg.data.patch_size), "n_eval": int(n_eval),
            "devices": jax.device_count(), "data": data_dir or cfg.data.source,
            "clip_x0": bool(clip_x0),
            "arms": arms}
  name = "ablation.json" if clip_x0 else "ablation_noclip.json"
  atomic_write_json(os.path.join(root, name), result, indent=2, sort_keys=True)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jisp.experiments.dtdm_ablation", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="root folder of the runs and ablation.json")
  p.add_argument("--steps", type=int, default=300, help="training steps of every model")
  p.add_argument("--direction", default="raw2rgb", choices=sorted(CONFIGS))
  p.add_argument("--estimator", default=None, choices=["regression", "upi"])
  p.add_argument("--n-eval", type=int, default=32, help="held-out patches")
  p.add_argument("--noise-steps", type=int, default=None, help="DDPM-from-noise steps (T)")
  p.add_argument("--data-dir", default="", help="prepared shards (default: synthetic)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-clip", action="store_true",
                 help="no clipping of the clean-image prediction (equations as printed)")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)}")
  from jisp.core import hostenv
  hostenv.configure()  # before jax starts: split the CPU cores into devices like `jisp`
  res = run(args.out, args.steps, direction=args.direction, estimator=args.estimator,
            n_eval=args.n_eval, noise_steps=args.noise_steps, data_dir=args.data_dir,
            seed=args.seed, clip_x0=not args.no_clip, overrides=rest)
  print(json.dumps(res, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
