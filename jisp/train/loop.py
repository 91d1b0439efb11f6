"""The one train loop, shared by every task.

One jit-compiled step over a 1-D 'data' mesh: the global batch is sharded over every
device of every process, parameters and optimiser state are replicated, and the state
is donated so it is updated in place. Each process feeds only its share of the batch.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jisp.core import microbatch, sharding
from jisp.core.errors import ConfigError, NonFiniteLoss
from jisp.core.fileio import atomic_write_json
from jisp.train import checkpoint, distributed, optim, runs, sources
from jisp.train import state as state_lib
from jisp.train.metrics_log import MetricsLog


def ema_update(ema, params, decay, step):
  # Warm-up of the decay so early EMA weights are not dominated by the random init.
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def loss_and_grads(task, params, batch, rng, micro_batch: int = 0):
  """(loss, aux, grads) of the batch mean; with micro_batch, accumulated over strided
  micro-batches of that many examples (models.microbatch), each with its own key.

  The mean over equal-sized micro-batches equals the batch mean, so only the random draws
  differ from one whole-batch call; the working set shrinks to one micro-batch, which on
  CPUs keeps it in cache (README "Speed").
  """
  def one(prm, mb, key):
    (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(prm, mb, key)
    return loss, aux, grads

  b = jax.tree.leaves(batch)[0].shape[0]
  if not micro_batch or b <= micro_batch:
    return one(params, batch, rng)
  parts = jax.tree.map(lambda a: microbatch.split(a, micro_batch), batch)
  # A Python loop, unrolled into the compiled step: the same loop as a rolled lax.scan ran
  # several times slower on XLA:CPU (README "Speed"); the price is compile time linear in
  # the number of micro-batches.
  total = None
  for i in range(b // micro_batch):
    mb = jax.tree.map(lambda a: a[i], parts)
    out = one(params, mb, jax.random.fold_in(rng, i))
    total = out if total is None else jax.tree.map(jnp.add, total, out)
  return jax.tree.map(lambda x: x / (b // micro_batch), total)


def micro_batch_of(config) -> int:
  """The config's micro_batch (0 = whole batch; configs saved before it existed lack it)."""
  return int(config.get("micro_batch", 0) or 0)


def make_train_step(task, tx, lr_fn, ema_decay, micro_batch: int = 0):
  def train_step(state, batch):
    rng, step_rng = jax.random.split(state.rng)
    loss, aux, grads = loss_and_grads(task, state.params, batch, step_rng, micro_batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
        ema_params=ema_update(state.ema_params, params, ema_decay, state.step))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step)}
    metrics.update(aux)
    return new_state, metrics
  return train_step


def make_eval_step(task):
  def eval_step(params, batch, rng):
    return task.eval_metrics(params, batch, rng)
  return eval_step


def compile_train_step(task, tx, lr_fn, config, mesh, state_sharding):
  batch_sh = jax.tree.map(lambda _: sharding.batch_sharding(mesh), task.batch_spec(config.batch_size))
  return jax.jit(make_train_step(task, tx, lr_fn, config.optim.ema_decay,
                                 micro_batch_of(config)),
                 in_shardings=(state_sharding, batch_sh),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def init_state(task, tx, config, mesh):
  """Replicated TrainState built directly on the mesh (no host round trip)."""
  create = functools.partial(state_lib.create, task, tx)
  shapes = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  state = jax.jit(create, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
  return state, state_sharding


def check_micro_batch(config, n_dev: int) -> None:
  """ConfigError unless micro_batch is 0 (off) or divides the global batch into parts
  that split evenly over the devices."""
  m = micro_batch_of(config)
  if m == 0 or m >= config.batch_size:
    return
  if m < 0 or config.batch_size % m or m % n_dev:
    raise ConfigError(f"bad value for config key 'micro_batch': {m} (must divide batch_size "
                      f"{config.batch_size} and be a multiple of the {n_dev} devices)")


class _StopFlag:
  """SIGTERM sets the flag; the loop checkpoints and exits cleanly at the next step."""

  def __init__(self):
    self.set = False
    self._prev = None

  def install(self):
    def handler(signum, frame):
      self.set = True
    self._prev = signal.signal(signal.SIGTERM, handler)

  def restore(self):
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)


def _finite_or_raise(step, metrics, last_good):
  for k in ("loss", "grad_norm"):
    v = float(metrics[k])
    if not math.isfinite(v):
      where = f"step {last_good}" if last_good is not None else "none yet"
      raise NonFiniteLoss(f"non-finite {k} ({v}) at step {step}; training stopped, "
                          f"last good checkpoint kept: {where}")


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.array([flag], np.int32))
  return bool(np.any(flags))


def train(config, workdir: str) -> dict:
  """Train (or resume) `config` in `workdir`. Returns a small summary dict."""
  distributed.initialize()
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  # The data folder against the config, before anything is built: a missing test split
  # or a broken shard must not surface at the first eval.
  sources.check_data(config, ("train", "test"), verify="size")
  task = runs.build_task(config)
  mesh = sharding.make_mesh()
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise ConfigError(f"bad value for config key 'batch_size': {config.batch_size} is not "
                      f"divisible by the {n_dev} devices of the mesh")
  check_micro_batch(config, n_dev)
  local_batch = config.batch_size // jax.process_count()

  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps)
  state, state_sharding = init_state(task, tx, config, mesh)
  n_params = state_lib.param_count(state.params)
  if is_main:
    print(f"jisp train: task={task.name} params={n_params:,} devices={n_dev} "
          f"processes={jax.process_count()} global_batch={config.batch_size} workdir={workdir}",
          flush=True)
    os.makedirs(workdir, exist_ok=True)
    atomic_write_json(os.path.join(workdir, "config.json"),
                      json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)

  source = sources.make_source(config, "train", local_batch=local_batch,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(workdir, keep=config.get("keep_checkpoints", 3))
  log = MetricsLog(workdir, is_main, config.num_steps)

  start = ckpt.latest_step()
  last_good = start
  if start is not None:
    state, data_state = ckpt.restore(start, state)
    source.set_state(data_state["source"])
    log.event(event="resume", step=int(start))
    if is_main:
      print(f"jisp train: resumed from checkpoint step {start}", flush=True)
  start = start or 0

  train_step = compile_train_step(task, tx, lr_fn, config, mesh, state_sharding)
  eval_step = jax.jit(make_eval_step(task))
  eval_batches = None

  stop = _StopFlag()
  stop.install()
  t_last, step_last = time.time(), start
  prev = None
  step = start
  try:
    for step in range(start + 1, config.num_steps + 1):
      batch = sharding.to_global(source.next(), mesh)
      state, metrics = train_step(state, batch)
      # Check the previous step's loss while this one runs: catches NaN within one
      # step without a host sync on every step.
      if prev is not None:
        _finite_or_raise(prev[0], prev[1], last_good)
      prev = (step, metrics)

      if step % config.log_every == 0 or step == config.num_steps:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _finite_or_raise(step, m, last_good)
        now = time.time()
        sps = (step - step_last) / max(now - t_last, 1e-9)
        m["steps_per_s"] = sps
        m["patches_per_s"] = sps * config.batch_size
        t_last, step_last = now, step
        log.write(step, m)
        log.progress(step, {"loss": m["loss"], "lr": m["lr"], "steps/s": sps})

      if step % config.eval_every == 0 or step == config.num_steps:
        if eval_batches is None:
          eval_batches = _eval_batches(config, local_batch, mesh)
        ev = _evaluate(eval_step, state.ema_params, eval_batches, config.seed)
        log.write(step, {f"eval/{k}": v for k, v in ev.items()})

      stopping = _any_process(stop.set) if (jax.process_count() == 1 or step % config.log_every == 0) else False
      if step % config.checkpoint_every == 0 or step == config.num_steps or stopping:
        _finite_or_raise(step, jax.device_get(metrics), last_good)
        ckpt.save(step, state, {"source": source.get_state()}, force=stopping)
        last_good = step
      if stopping:
        if is_main:
          print(f"jisp train: SIGTERM received; checkpoint written at step {step}, exiting",
                flush=True)
        break
  finally:
    ckpt.close()
    log.close()
    source.close()
    stop.restore()
  return {"step": int(step), "params": n_params, "workdir": workdir}


def _eval_batches(config, local_batch, mesh):
  src = sources.make_source(config, "test", local_batch=local_batch,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), train=False)
  out = [sharding.to_global(src.next(), mesh) for _ in range(config.get("eval_batches", 2))]
  src.close()
  return out


def _evaluate(eval_step, params, batches, seed):
  totals = {}
  for i, b in enumerate(batches):
    m = eval_step(params, b, jax.random.PRNGKey(seed + 1000 + i))
    for k, v in jax.device_get(m).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / len(batches) for k, v in totals.items()}
