"""`jisp bench predict` (alias `bench sample`): compiled predict speed of any task, in the
units of the DDPM paper's Table 3.

Times the exact function `jisp reconstruct` runs (PatchPredictor: the task's whole predict,
for a sampling task one jit-compiled lax.scan, the batch sharded over --devices local
devices) on one batch of random patches, and reports:
  seconds              median wall time of one predict call on one batch (compile and
                       warm-up excluded; compile_s is reported apart)
  seconds_per_image    seconds x batches per image, for --image-size (default 2012x1324, a
                       FiveK Nikon D700 frame) tiled on the paper's regular grid of patches
  patch_nfe_per_s      patches x network evaluations per second
  achieved_gflops      XLA's FLOP count of one network evaluation on one patch (the task's
                       `network`) x patches x NFE / seconds
  matmul_ceiling_gflops  an fp32 (n x n) @ (n x n) matmul per device on the same devices,
                       timed here: what this machine can do on the easiest dense op;
                       fraction_of_ceiling = achieved / ceiling
with the CPU model and instruction-set flags. Random init unless --workdir names a trained
run (speed does not depend on the weights). Nothing here imports jisp.data, TensorFlow or
rawpy: it runs on accelerator images that have only jax.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core.errors import OptionError
from jisp.experiments import machine
from jisp.infer import predict, tiling
from jisp.train import runs

DEFAULT_IMAGE = "2012x1324"  # a FiveK Nikon D700 frame


def parse_size(text: str) -> tuple[int, int]:
  """'WxH' -> (H, W)."""
  try:
    w, h = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise OptionError(f"image size must look like WIDTHxHEIGHT, got {text!r}") from None
  if w < 1 or h < 1:
    raise OptionError(f"image size must be positive, got {text!r}")
  return h, w


def timed_options(task, options, nfe: int, timed_nfe):
  """A shorter run of the same predict with about `timed_nfe` NFE (None: the full one).

  Every network evaluation of a sampler costs the same (one forward plus a few fused
  element-wise ops), so a long sampler's time is measured on a prefix and scaled by NFE.
  """
  if not timed_nfe or nfe <= timed_nfe:
    return options
  tries = ([options.replace(start_step=int(timed_nfe))] if options.sampler == "ddpm" else [])
  tries.append(options.replace(steps=int(timed_nfe)))
  for opts in tries:
    try:
      return task.resolve_options(opts)
    except OptionError:
      continue
  raise OptionError(f"--timed-nfe {timed_nfe}: {task.name} cannot time a prefix of "
                    f"{options.sampler}")


def bench_predict(config=None, *, workdir=None, options=None, batch=16, devices=None,
                  repeats=2, warmup=1, image_size=DEFAULT_IMAGE, timed_nfe=None,
                  matmul_n=2048, seed=0, net_chunk="auto", log=None) -> dict:
  """One measurement (a dict; see the module docstring for the fields)."""
  if workdir:
    run = runs.load_run(workdir)
    config, task, params, source = run.config, run.task, run.params, f"{workdir}@{run.step}"
  else:
    task = runs.build_task(config)
    params, source = runs.random_params(task, seed), "random init"
  opts = task.resolve_options(options)
  nfe = task.nfe(opts)
  pred = predict.PatchPredictor(task, params, timed_options(task, opts, nfe, timed_nfe),
                                max_batch=batch, devices=devices, net_chunk=net_chunk)
  if batch % pred.n_dev:
    raise OptionError(f"--batch {batch} is not a multiple of the {pred.n_dev} devices")
  say = log or (lambda m: None)
  say(f"jisp bench predict: {task.name}, {pred.describe()} (full: {nfe} NFE), batch {batch} "
      f"on {pred.n_dev} {jax.default_backend()} device(s), params: {source}; compiling...")

  t0 = time.perf_counter()
  fn = pred.compiled(batch)
  compile_s = time.perf_counter() - t0
  io, p = task.io, task.io.patch
  rng = np.random.default_rng(seed)
  inputs = pred.put(rng.random((batch, p, p, io.in_channels), np.float32))
  noise = pred.put(rng.standard_normal((batch, p, p, io.noise_channels), np.float32)) \
      if pred.noisy else None
  key = pred.key(jax.random.PRNGKey(seed))

  def once():
    t = time.perf_counter()
    pred.run(fn, inputs, noise, key).block_until_ready()
    return time.perf_counter() - t

  for _ in range(max(0, warmup)):
    once()
  times = [once() for _ in range(max(1, repeats))]
  measured = statistics.median(times)
  seconds = measured * nfe / pred.nfe  # pred.nfe < nfe only with --timed-nfe

  net_flops = task.network_flops(params)
  say("measuring the matmul ceiling...")
  ceiling = machine.matmul_ceiling(devices, matmul_n)
  h, w = parse_size(image_size)
  n_patches = len(tiling.make_layout(h, w, p, 0, True))
  achieved = net_flops * batch * nfe / seconds / 1e9 if net_flops else None
  return {
      "impl": "jax", "bench": "predict", "task": task.name, "direction": io.direction,
      "sampler": opts.sampler, "steps": opts.steps if opts.steps is not None else nfe,
      "nfe": nfe, "options": opts.extras(), "batch": batch, "patch": p,
      "devices": pred.n_dev, "processes": jax.process_count(),
      "net_chunk": pred.net_chunk_for(batch) or batch,
      **machine.device_info(), **machine.cpu_info(),
      "dtype": str(config.model.get("dtype", "float32")), "params": source,
      "n_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
      "seconds": seconds, "seconds_runs": times, "timed_nfe": pred.nfe,
      "extrapolated": pred.nfe != nfe,
      "image_size": f"{w}x{h}", "tiling": "grid",
      "patches_per_image": n_patches, "batches_per_image": -(-n_patches // batch),
      "seconds_per_image": seconds * -(-n_patches // batch),
      "patch_nfe_per_s": batch * nfe / seconds,
      "gflop_per_nfe_patch": net_flops / 1e9 if net_flops else None,
      "achieved_gflops": achieved, "matmul_ceiling_gflops": ceiling,
      "fraction_of_ceiling": achieved / ceiling if achieved else None,
      **machine.utilisation(achieved, pred.n_dev, machine.device_info()["device_kind"],
                            ceiling if jax.default_backend() == "cpu" else None),
      "compile_s": compile_s,
  }


def human(r: dict) -> str:
  ext = f" (timed on {r['timed_nfe']} NFE, scaled)" if r["extrapolated"] else ""
  fl = (f"{r['gflop_per_nfe_patch']:.2f} GFLOP/patch/NFE (XLA cost analysis), achieved "
        f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_ceiling']:.0f}% of "
        if r["achieved_gflops"] else "FLOPs unavailable; ")
  return "\n".join([
      f"{r['task']}: {r['sampler']} {r['nfe']} NFE, batch {r['batch']} x {r['patch']}x"
      f"{r['patch']} on {r['devices']} {r['backend']} device(s), {r['dtype']}, network called "
      f"on {r['net_chunk']} patches at a time",
      f"  machine: {r['cpu_model']} ({r['cpu_count']} cores; {' '.join(r['cpu_flags'])})",
      f"  {r['seconds']:.3f} s per batch{ext}; compile {r['compile_s']:.1f} s (apart)",
      f"  {r['patch_nfe_per_s']:.1f} patch-NFE/s; {fl}"
      f"the {r['matmul_ceiling_gflops']:.1f} GFLOP/s fp32 matmul ceiling"
      + (f"; MFU {100 * r['mfu']:.1f}% ({r['mfu_basis']})" if r.get("mfu") else ""),
      f"  image {r['image_size']} = {r['patches_per_image']} patches ({r['tiling']}) = "
      f"{r['batches_per_image']} batches: {r['seconds_per_image']:.1f} s per image",
  ])
