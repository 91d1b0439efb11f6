"""Config `micro_batch`: how many examples one forward/backward of a train step holds.

A train step may run its batch as strided micro-batches and add their gradients
(jisp.train.loop.loss_and_grads). On CPUs that is faster: smaller micro-batches write and
re-read smaller activations, while each micro-batch also pays fixed costs (a sum of
parameter-sized gradients, layers at 8x8 too small to keep the cores busy), so there is a
best size, and it depends on which library runs the convolutions (config `cpu_conv`).
On accelerators the whole batch is what the hardware wants.

Values: 0 (the whole batch), a global count that divides the batch into parts that split
evenly over the devices, or "auto" (the default): on CPU, as many examples per device as
fit the budget of the train step's convolution library (`CPU_WORKING_SET`) by the forward
pass's own size per example, read off its jaxpr; elsewhere the whole batch. "auto" only
splits tasks whose `draws` say what the loss draws, so splitting changes the summation
order and nothing else; an explicit count also splits the others, each micro-batch then
drawing with a key of its own.
"""
from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp

from jisp.core import cpu_conv
from jisp.core.errors import ConfigError

AUTO = "auto"

# Forward-pass bytes (every intermediate, per jaxpr) one CPU device's micro-batch may hold,
# by the library the train step's convolutions run on (jisp.core.cpu_conv). Set from
# README's micro-batch sweeps of the paper U-Net at 64x64 (about 240 MiB per patch): best
# at 8 patches per device with XLA's own convolutions, at 2 to 4 with YNNPACK's.
CPU_WORKING_SET = {"xla": 2 * 2 ** 30, "ynnpack": 640 * 2 ** 20}

# Each micro-batch is unrolled into the compiled step (a rolled loop ran slower on
# XLA:CPU), so compile time grows with their number: "auto" makes no more than this.
MAX_AUTO_PARTS = 8


def requested(config) -> int | str:
  """The config's micro_batch as an int, or "auto" (configs saved before it existed lack
  it: 0). ConfigError naming the key for anything else."""
  raw = config.get("micro_batch", 0) if hasattr(config, "get") else 0
  if isinstance(raw, str) and raw.strip().lower() == AUTO:
    return AUTO
  try:
    value = int(raw or 0)
  except (TypeError, ValueError):
    raise ConfigError(f"bad value for config key 'micro_batch': {raw!r} (expected 'auto', "
                      "0 for the whole batch, or a number of examples)") from None
  return value


def check(config, n_dev: int) -> None:
  """ConfigError unless micro_batch is "auto", 0 (off) or divides the global batch into
  parts that split evenly over the devices."""
  m = requested(config)
  if m == AUTO or m == 0 or m >= config.batch_size:
    return
  if m < 0 or config.batch_size % m or m % n_dev:
    raise ConfigError(f"bad value for config key 'micro_batch': {m} (must divide batch_size "
                      f"{config.batch_size} and be a multiple of the {n_dev} devices)")


def _jaxpr_bytes(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    subs = [v for v in eqn.params.values()
            if isinstance(v, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr))]
    if subs:  # a call (pjit, custom_vjp, ...): count what runs inside it
      total += sum(_jaxpr_bytes(getattr(s, "jaxpr", s)) for s in subs)
      continue
    for v in eqn.outvars:
      dtype = getattr(v.aval, "dtype", None)
      if isinstance(dtype, jnp.dtype):  # arrays (typed PRNG keys are not)
        total += int(v.aval.size) * dtype.itemsize
  return total


def forward_bytes_per_example(task, params_shapes=None) -> int:
  """Bytes of every intermediate of the task's loss on one example (traced, not run)."""
  key = jax.random.PRNGKey(0)
  if params_shapes is None:
    params_shapes = jax.eval_shape(task.init_params, key)
  jaxpr = jax.make_jaxpr(lambda p, b, k: task.loss(p, b, k)[0])(
      params_shapes, task.batch_spec(1), key)
  return _jaxpr_bytes(jaxpr.jaxpr)


def _largest_divisor_at_most(n: int, cap: int) -> int:
  return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def choose(batch: int, n_dev: int, bytes_per_example: int,
           budget: int = CPU_WORKING_SET["xla"], max_parts: int = MAX_AUTO_PARTS) -> int:
  """The global micro-batch (0 = whole batch) for a batch sharded over n_dev devices:
  the most examples per device whose forward fits `budget`, then fewer parts where there
  would be more than `max_parts`."""
  per_dev = batch // n_dev
  fit = max(1, budget // max(1, bytes_per_example))
  m = _largest_divisor_at_most(per_dev, fit)
  while per_dev // m > max_parts:
    m = min(d for d in range(m + 1, per_dev + 1) if per_dev % d == 0)
  return 0 if m >= per_dev else m * n_dev


def resolve(task, config, n_dev: int, backend: str | None = None, params_shapes=None,
            budget: int | None = None) -> int:
  """The global micro-batch a train step runs with (0 = whole batch); `budget`: bytes per
  device (default: CPU_WORKING_SET of the config's train-step convolution library)."""
  m = requested(config)
  if m != AUTO:
    return 0 if m >= config.batch_size else m
  backend = backend or jax.default_backend()
  if backend != "cpu" or config.batch_size // n_dev < 2:
    return 0
  if jax.eval_shape(task.draws, jax.random.PRNGKey(0), task.batch_spec(1)) is None:
    return 0
  if budget is None:
    budget = CPU_WORKING_SET[cpu_conv.library(config, "train")]
  return choose(config.batch_size, n_dev, forward_bytes_per_example(task, params_shapes), budget)
