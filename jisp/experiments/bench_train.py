"""`jisp bench train` and `jisp bench data`: the one train step's speed, and whether the
input pipeline keeps it fed.

`bench train` prints one JSON line per measurement (1 device and all local devices). Inputs
are random arrays of the task's batch shape (no data pipeline, no TensorFlow), so it runs on
any accelerator image with JAX. GFLOP/s is XLA's own count of the compiled step (cost
analysis) over measured time.
"""
from __future__ import annotations

import sys
import time

import jax
import numpy as np

from jisp.core import cpu_conv, sharding
from jisp.core.errors import ConfigError
from jisp.core.flops import compiled_flops
from jisp.experiments import machine
from jisp.train import guard, loop, micro_batch, optim, runs


def _guard(mesh):
  return jax.device_put(guard.init(), sharding.replicated(mesh))


def _time_steps(step_fn, state, batch, steps: int, g):
  """One warm-up step, then seconds per step over `steps` (state and guard are donated
  each call, as in the loop)."""
  state, m, g = step_fn(state, batch, g)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m, g = step_fn(state, batch, g)
  jax.block_until_ready(m)
  return state, m, (time.perf_counter() - t0) / steps


def _random_batch(spec, mesh, seed=0):
  rng = np.random.default_rng(seed)
  local = {k: rng.random(s.shape, np.float32) for k, s in spec.items()}
  return sharding.to_global(local, mesh)


def bench_train(config, steps: int = 5, emit=None, device_counts=None,
                matmul_n: int = 2048) -> list[dict]:
  """One record per device count; `emit(record)` is called as each is measured."""
  task = runs.build_task(config)
  ceiling = machine.matmul_ceiling(None, matmul_n) if jax.default_backend() == "cpu" else None
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps)
  counts = device_counts or sorted({1, jax.local_device_count()})
  results = []
  for n in counts:
    if config.batch_size % n:
      print(f"jisp bench: skipping {n} devices: batch {config.batch_size} not divisible",
            file=sys.stderr)
      continue
    micro_batch.check(config, n)
    mesh = sharding.make_mesh(n)
    state, state_sh = loop.init_state(task, tx, config, mesh)
    batch = _random_batch(task.batch_spec(config.batch_size), mesh)
    micro = micro_batch.resolve(task, config, n)
    step_fn = loop.compile_train_step(task, tx, lr_fn, config, mesh, state_sh, micro)
    t0 = time.perf_counter()
    g = _guard(mesh)
    compiled = step_fn.lower(state, batch, g).compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled, n) or 0.0
    state, m, dt = _time_steps(compiled, state, batch, steps, g)
    rec = {
        "bench": "train", "task": task.name, "devices": n,
        "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
        "batch": config.batch_size, "patch": config.data.patch_size,
        "micro_batch": micro or config.batch_size,
        "micro_batch_requested": str(micro_batch.requested(config)),
        "seconds_per_step": round(dt, 4), "patches_per_s": round(config.batch_size / dt, 2),
        "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / dt / 1e9, 2),
        "compile_s": round(compile_s, 2), "timed_steps": steps,
        "loss_finite": bool(np.isfinite(float(m["loss"]))), **machine.cpu_info(),
        "dtype": str(config.model.get("dtype", "float32")),
        # what ran the convolutions (jisp.core.cpu_conv) and their kernel gradients
        "cpu_conv": cpu_conv.library(config, "train") if jax.default_backend() == "cpu"
        else None,
        "conv_kernel_grad": getattr(getattr(task, "model", None), "conv_kernel_grad", None),
        **machine.utilisation(flops / dt / 1e9, n, jax.devices()[0].device_kind,
                              ceiling * n / jax.local_device_count() if ceiling else None),
    }
    results.append(rec)
    if emit:
      emit(rec)
    del state, batch, compiled
  return results


def human_train(rec: dict) -> str:
  mfu = f", MFU {100 * rec['mfu']:.1f}% ({rec['mfu_basis']})" if rec.get("mfu") else ""
  return (f"train step on {rec['devices']} {rec['platform']} device(s): {rec['patches_per_s']} "
          f"patches/s, {rec['achieved_gflops']} GFLOP/s ({rec['seconds_per_step']} s/step, "
          f"compile {rec['compile_s']} s{mfu}); {rec['cpu_model']}")


def bench_data(config, steps: int = 20, emit=None) -> list[dict]:
  """Input pipeline vs train step: can the pipeline keep the step fed?

  Three measurements: (1) patches/s the pipeline alone delivers, (2) patches/s of the
  train step alone on a fixed batch, (3) a real training run of `steps` steps reading from
  the pipeline, with the fraction of wall time the host spends waiting for the next batch
  (time in source.next() + host->device transfer). JAX dispatch is asynchronous, so
  fetching overlaps the previous step; a wait fraction near 0 means data is not the
  bottleneck.
  """
  from jisp.train import sources
  if not config.data.dir:
    raise ConfigError("jisp bench data needs --config.data.dir=PREPARED_DIR")
  mesh = sharding.make_mesh()
  task = runs.build_task(config)
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps)
  results = []

  cpu = machine.cpu_info()

  def emit_(rec):
    rec = {**rec, **cpu}
    results.append(rec)
    if emit:
      emit(rec)

  src = sources.make_source(config, "train", local_batch=config.batch_size,
                            process_index=0, process_count=1)
  src.next()  # build the pipeline and fill prefetch buffers once
  n = max(steps, 10)
  t0 = time.perf_counter()
  for _ in range(n):
    src.next()
  dt = time.perf_counter() - t0
  emit_({"bench": "data", "what": "pipeline_only", "batch": config.batch_size,
        "patch": config.data.patch_size, "patches_per_s": round(n * config.batch_size / dt, 1)})

  state, state_sh = loop.init_state(task, tx, config, mesh)
  step_fn = loop.compile_train_step(task, tx, lr_fn, config, mesh, state_sh)
  batch = sharding.to_global(src.next(), mesh)
  g = _guard(mesh)
  state, _, step_dt = _time_steps(step_fn, state, batch, steps, g)
  g = _guard(mesh)  # the timed loop donated the previous one
  emit_({"bench": "data", "what": "train_step_only", "devices": jax.device_count(),
        "patches_per_s": round(config.batch_size / step_dt, 1)})

  wait = 0.0
  t0 = time.perf_counter()
  for _ in range(steps):
    tw = time.perf_counter()
    batch = sharding.to_global(src.next(), mesh)
    wait += time.perf_counter() - tw
    state, m, g = step_fn(state, batch, g)
  jax.block_until_ready(m)
  total = time.perf_counter() - t0
  emit_({"bench": "data", "what": "train_from_pipeline", "devices": jax.device_count(),
        "patches_per_s": round(steps * config.batch_size / total, 1),
        "wait_fraction": round(wait / total, 4)})
  src.close()
  return results
