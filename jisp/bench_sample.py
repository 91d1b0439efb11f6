"""`jisp bench sample`: compiled sampling speed, in the units of the DDPM paper's Table 3.

Times the exact function `jisp reconstruct` runs (PatchPredictor: the whole sampler as one
jit-compiled lax.scan, the batch sharded over --devices local devices) on one batch of
random patches, and reports:
  seconds              median wall time of one full sampling run of one batch (compile and
                       warm-up excluded; compile_s is reported apart)
  seconds_per_image    seconds x batches per image, for --image-size (default 2012x1324, a
                       FiveK Nikon D700 frame) tiled on the paper's regular grid of patches
  patch_nfe_per_s      patches x network evaluations per second
  achieved_gflops      XLA's own FLOP count of one network forward (cost analysis of the
                       compiled U-Net, per patch) x patches x NFE / seconds
  matmul_ceiling_gflops  an fp32 (n x n) @ (n x n) matmul per device on the same devices,
                       timed here: what this machine can do on the easiest dense op;
                       fraction_of_ceiling = achieved / ceiling
Random init unless --workdir names a trained run (speed does not depend on the weights).
This module and everything it imports stay clear of jisp.data, TensorFlow and rawpy, so it
runs on accelerator images that have only jax.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jisp import tasks
from jisp.infer import predict, tiling
from jisp.infer.args import DEFAULT_IMAGE, add_bench_sample_args  # noqa: F401 (CLI)



def _cost_flops(compiled) -> float | None:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def forward_flops_per_patch(task, params) -> float | None:
  """FLOPs XLA counts for one network evaluation on one patch (an FMA = 2 FLOPs)."""
  p = task.patch
  x = jax.ShapeDtypeStruct((1, p, p, task.raw_channels + task.cond_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  fwd = jax.jit(lambda prm, xx, tt: task.model.apply({"params": prm}, xx, tt, train=False))
  return _cost_flops(fwd.lower(spec, x, t).compile())


def matmul_ceiling(devices: int | None, n: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of an fp32 matmul, one (n x n) @ (n x n) per device, sharded over `devices`."""
  from jisp.train import mesh as mesh_lib
  mesh = mesh_lib.make_mesh(devices)
  k = mesh.devices.size
  a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (k * n, n), jnp.float32),
                     mesh_lib.batch_sharding(mesh))
  b = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32),
                     mesh_lib.replicated(mesh))
  f = jax.jit(lambda x, y: x @ y, out_shardings=mesh_lib.batch_sharding(mesh))
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * k * n ** 3 / best / 1e9


def parse_size(text: str) -> tuple[int, int]:
  """'WxH' -> (H, W)."""
  try:
    w, h = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"image size must look like WIDTHxHEIGHT, got {text!r}") from None
  if w < 1 or h < 1:
    raise ValueError(f"image size must be positive, got {text!r}")
  return h, w


def _timed_options(task, sampler, steps, nfe, timed_nfe):
  """(steps, sampler_kw) of a shorter run of the same sampler with about `timed_nfe` NFE.

  Every evaluation of a sampler costs the same (one network forward plus a few fused
  element-wise ops), so a long sampler's time is measured on a prefix and scaled by NFE.
  """
  if not timed_nfe or nfe <= timed_nfe:
    return steps, {}
  if sampler == "ddpm":
    return None, {"start_step": int(timed_nfe)}
  return int(timed_nfe), {}


def bench_sample(config, *, sampler=None, steps=None, batch=16, devices=None, workdir=None,
                 repeats=2, warmup=1, image_size=DEFAULT_IMAGE, overlap=0, grid=True,
                 timed_nfe=None, matmul_n=2048, seed=0, net_chunk="auto", log=None) -> dict:
  """One measurement (a dict; see the module docstring for the fields)."""
  if workdir:
    run = predict.load_run(workdir)
    config, task, params, source = run.config, run.task, run.params, f"{workdir}@{run.step}"
  else:
    task = tasks.get_task(config)
    params, source = predict.random_params(task, seed), "random init"
  if sampler is None:
    sampler, steps_default = predict.default_sampler(config)
  else:
    steps_default = predict.DEFAULT_STEPS.get(sampler)
  steps = steps if steps is not None else steps_default
  if sampler == "ddpm" and steps == task.schedule.num_timesteps:
    steps = None
  nfe = task.nfe(sampler=sampler, steps=steps)
  t_steps, t_kw = _timed_options(task, sampler, steps, nfe, timed_nfe)
  pred = predict.PatchPredictor(task, params, sampler=sampler, steps=t_steps,
                                max_batch=batch, devices=devices, sampler_kw=t_kw,
                                net_chunk=net_chunk)
  if batch % pred.n_dev:
    raise ValueError(f"--batch {batch} is not a multiple of the {pred.n_dev} devices")
  say = log or (lambda m: None)
  say(f"jisp bench sample: {sampler} {nfe} NFE, batch {batch} on {pred.n_dev} "
      f"{jax.default_backend()} device(s), params: {source}; compiling...")

  t0 = time.perf_counter()
  fn = pred.compiled(batch)
  compile_s = time.perf_counter() - t0
  p = task.patch
  rng = np.random.default_rng(seed)
  rgb = pred.put(rng.random((batch, p, p, task.cond_channels), np.float32))
  x0 = pred.put(rng.standard_normal((batch, p, p, task.raw_channels), np.float32))
  key = jax.device_put(jax.random.PRNGKey(seed), pred._rep)

  def once():
    t = time.perf_counter()
    fn(pred.params, rgb, x0, key).block_until_ready()
    return time.perf_counter() - t

  for _ in range(max(0, warmup)):
    once()
  times = [once() for _ in range(max(1, repeats))]
  measured = statistics.median(times)
  seconds = measured * nfe / pred.nfe  # pred.nfe < nfe only with --timed-nfe

  flops = forward_flops_per_patch(task, params)
  say("measuring the matmul ceiling...")
  ceiling = matmul_ceiling(devices, matmul_n)
  h, w = parse_size(image_size)
  layout = tiling.make_layout(h, w, p, 0 if grid else overlap, grid)
  n_patches = len(layout)
  achieved = flops * batch * nfe / seconds / 1e9 if flops else None
  dev = jax.devices()[0]
  return {
      "impl": "jax", "sampler": sampler, "steps": steps if steps is not None else nfe,
      "nfe": nfe, "batch": batch, "patch": p, "devices": pred.n_dev,
      "net_chunk": pred.net_chunk_for(batch) or batch,
      "backend": jax.default_backend(), "device_kind": getattr(dev, "device_kind", ""),
      "dtype": str(config.model.get("dtype", "float32")), "params": source,
      "n_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
      "seconds": seconds, "seconds_runs": times, "timed_nfe": pred.nfe,
      "extrapolated": pred.nfe != nfe,
      "image_size": f"{w}x{h}", "tiling": "grid" if grid else f"overlap{overlap}",
      "patches_per_image": n_patches, "batches_per_image": -(-n_patches // batch),
      "seconds_per_image": seconds * -(-n_patches // batch),
      "patch_nfe_per_s": batch * nfe / seconds,
      "gflop_per_nfe_patch": flops / 1e9 if flops else None,
      "achieved_gflops": achieved, "matmul_ceiling_gflops": ceiling,
      "fraction_of_ceiling": achieved / ceiling if achieved else None,
      "compile_s": compile_s,
  }


# --------------------------------------------------------------------------- CLI

def _human(r: dict) -> str:
  ext = f" (timed on {r['timed_nfe']} NFE, scaled)" if r["extrapolated"] else ""
  fl = (f"{r['gflop_per_nfe_patch']:.2f} GFLOP/patch/NFE (XLA cost analysis), achieved "
        f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_ceiling']:.0f}% of "
        if r["achieved_gflops"] else "FLOPs unavailable; ")
  return "\n".join([
      f"{r['sampler']} {r['nfe']} NFE, batch {r['batch']} x {r['patch']}x{r['patch']} on "
      f"{r['devices']} {r['backend']} device(s), {r['dtype']}, network called on "
      f"{r['net_chunk']} patches at a time",
      f"  {r['seconds']:.3f} s per batch{ext}; compile {r['compile_s']:.1f} s (apart)",
      f"  {r['patch_nfe_per_s']:.1f} patch-NFE/s; {fl}"
      f"the {r['matmul_ceiling_gflops']:.1f} GFLOP/s fp32 matmul ceiling",
      f"  image {r['image_size']} = {r['patches_per_image']} patches ({r['tiling']}) = "
      f"{r['batches_per_image']} batches: {r['seconds_per_image']:.1f} s per image",
  ])


def run_bench_sample(args, config=None) -> int:
  """CLI body. `config`: the loaded config (else args.config with args.overrides)."""
  try:
    if config is None and not getattr(args, "workdir", None):
      from jisp.config_utils import load
      config = load(args.config, getattr(args, "overrides", []) or [])
    r = bench_sample(config, sampler=args.sampler, steps=args.steps, batch=args.batch,
                     devices=args.devices, workdir=args.workdir, repeats=args.repeats,
                     warmup=args.warmup, image_size=args.image_size,
                     timed_nfe=args.timed_nfe, matmul_n=args.matmul_n, seed=args.seed,
                     net_chunk=getattr(args, "net_chunk", "auto"),
                     log=None if args.json else (lambda m: print(m, flush=True)))
  except (ValueError, FileNotFoundError) as e:
    print(f"jisp bench sample: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(json.dumps(r) if args.json else _human(r), flush=True)
  return 0
