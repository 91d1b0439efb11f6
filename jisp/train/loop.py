"""The one train loop, shared by every task.

One jit-compiled step over the (data, fsdp) mesh of `mesh.fsdp` (jisp.core.sharding):
the global batch is sharded over every device of every process, parameters, EMA and
optimiser state are replicated (fsdp = 1) or split over fsdp by the `mesh.*` rule, and
the state is donated so it is updated in place. Each process feeds only its share of the
batch; with several processes each program's first run starts on all of them at once
(jisp.train.distributed.Lockstep). A checkpoint restores onto any mesh.

What keeps a run safe (README "Reliability"):
  * the workdir is checked and locked before anything is built (jisp.train.workdir);
  * a resume first compares the config with the run's config.json (jisp.train.resume),
    then restores the newest checkpoint that verifies (jisp.train.checkpoint), and only
    then rewrites config.json;
  * the step updates an on-device NaN/inf guard (jisp.train.guard) that the host reads
    only at log / eval / checkpoint steps; every save is preceded by a check of the
    whole state and of the loss its weights (and their EMA) give, so no checkpoint
    holds non-finite or exploded weights;
  * SIGTERM and SIGINT (Ctrl-C) stop at the next step with a checkpoint.

Progressive stages (config `stages`, see jisp.core.config.stage_list): each stage has its
own patch size and global batch, so its own task view (a config copy with the stage's
data.patch_size and batch_size), data source and compiled step; the state, optimiser,
schedule and EMA run on across stages. A checkpoint records the stage and the source
position inside it, so a resume anywhere replays exactly the batches an unbroken run
sees. Evaluation always uses the first stage's patch and batch, so its numbers stay
comparable across stages.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jisp.core import config as config_lib, cpu_conv, microbatch, sharding
from jisp.core.errors import (ConfigError, NonFiniteLoss, RunError, UserError,
                              missing_config_key)
from jisp.core.fileio import atomic_write_json, atomic_write_text
from jisp.train import checkpoint, distributed, guard, optim, resume, runs, sources
from jisp.train import micro_batch as micro_batch_lib
from jisp.train import state as state_lib
from jisp.train import workdir as workdir_lib
from jisp.train.metrics_log import MetricsLog


def ema_update(ema, params, decay, step):
  # Warm-up of the decay so early EMA weights are not dominated by the random init.
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def loss_and_grads(task, params, batch, rng, micro_batch: int = 0):
  """(loss, aux, grads) of the batch mean; with micro_batch, accumulated over strided
  micro-batches of that many examples (core.microbatch).

  The mean over equal-sized micro-batches equals the batch mean. A task whose `draws`
  says what its loss draws gets them made once for the whole batch, each micro-batch its
  rows of them, so the result is the whole batch's up to summation order; any other draws
  come from a key per micro-batch. The working set shrinks to one micro-batch, which on
  CPUs moves fewer bytes per step (README "Speed").
  """
  def one(prm, mb, key, draws):
    kw = {} if draws is None else {"draws": draws}
    (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(prm, mb, key, **kw)
    return loss, aux, grads

  b = jax.tree.leaves(batch)[0].shape[0]
  if not micro_batch or b <= micro_batch:
    return one(params, batch, rng, None)
  draws = task.draws(rng, batch) if hasattr(task, "draws") else None
  parts = jax.tree.map(lambda a: microbatch.split(a, micro_batch), batch)
  draw_parts = None if draws is None else \
      jax.tree.map(lambda a: microbatch.split(a, micro_batch), draws)
  # A Python loop, unrolled into the compiled step: the same loop as a rolled lax.scan ran
  # at half the speed on XLA:CPU (README "Speed"); the price is compile time linear in the
  # number of micro-batches.
  total = None
  for i in range(b // micro_batch):
    pick = lambda a: a[i]  # noqa: E731
    mb = jax.tree.map(pick, parts)
    key = rng if draws is not None else jax.random.fold_in(rng, i)
    out = one(params, mb, key, None if draws is None else jax.tree.map(pick, draw_parts))
    total = out if total is None else jax.tree.map(jnp.add, total, out)
  return jax.tree.map(lambda x: x / (b // micro_batch), total)


def make_train_step(task, tx, lr_fn, ema_decay, micro_batch: int = 0):
  """step(state, batch, guard) -> (state, metrics, guard). The guard (jisp.train.guard)
  records the first step whose loss or gradient norm is not finite."""
  def train_step(state, batch, g):
    rng, step_rng = jax.random.split(state.rng)
    loss, aux, grads = loss_and_grads(task, state.params, batch, step_rng, micro_batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
        ema_params=ema_update(state.ema_params, params, ema_decay, state.step))
    grad_norm = optax.tree.norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step)}
    metrics.update(aux)
    return new_state, metrics, guard.update(g, state.step + 1, loss, grad_norm)
  return train_step


def make_eval_step(task):
  def eval_step(params, batch, rng):
    return task.eval_metrics(params, batch, rng)
  return eval_step


def compile_train_step(task, tx, lr_fn, config, mesh, state_sharding, micro_batch=None):
  """The jitted train step; micro_batch: the resolved global micro-batch (None: the
  config's, by `micro_batch_lib.resolve`)."""
  batch_sh = jax.tree.map(lambda _: sharding.batch_sharding(mesh), task.batch_spec(config.batch_size))
  rep = sharding.replicated(mesh)
  if micro_batch is None:
    micro_batch = micro_batch_lib.resolve(task, config, mesh.size)
  return jax.jit(make_train_step(task, tx, lr_fn, config.optim.ema_decay, micro_batch),
                 in_shardings=(state_sharding, batch_sh, rep),
                 out_shardings=(state_sharding, rep, rep),
                 donate_argnums=(0, 2),
                 compiler_options=cpu_conv.compiler_options(config, "train"))


def compile_eval_step(task, config):
  """The jitted evaluation step (forward only: convolutions as for inference)."""
  return jax.jit(make_eval_step(task),
                 compiler_options=cpu_conv.compiler_options(config, "infer"))


def state_shardings(shapes, config, mesh):
  """Shardings of a TrainState's arrays: the config's fsdp rule (`mesh.min_shard_size`,
  `mesh.replicate`; jisp.core.sharding.param_shardings) over params, EMA and optimiser
  state alike (Adam's moments have the params' shapes, so they split the same way); the
  step, the RNG and every small array stay replicated. With mesh.fsdp = 1: all replicated."""
  m = config.get("mesh") if hasattr(config, "get") else None
  min_size = int(m.get("min_shard_size", sharding.MIN_SHARD_SIZE)) if m is not None else \
      sharding.MIN_SHARD_SIZE
  replicate = tuple(m.get("replicate", ())) if m is not None else ()
  return sharding.param_shardings(shapes, mesh, min_size=min_size, replicate=replicate)


def init_state(task, tx, config, mesh):
  """TrainState built directly on the mesh, laid out by `state_shardings` (no host round
  trip)."""
  create = functools.partial(state_lib.create, task, tx)
  shapes = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  state_sharding = state_shardings(shapes, config, mesh)
  state = jax.jit(create, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
  return state, state_sharding


def _make_mesh(config):
  try:
    return sharding.mesh_from_config(config)
  except ValueError as e:  # fsdp that does not divide the devices
    raise ConfigError(f"bad value for config key 'mesh.fsdp': {e}") from None


# ------------------------------------------------------------------ host reads

HOST_READS = {"count": 0}


def to_host(tree):
  """Every device -> host read of the loop goes through here (and only happens on log,
  eval and checkpoint steps); tests run the loop under a transfer guard that forbids any
  other, and count these."""
  HOST_READS["count"] += 1
  with jax.transfer_guard_device_to_host("allow"):
    return jax.device_get(tree)


@contextlib.contextmanager
def _host_io():
  """A save copies the state to the host: allowed like `to_host`."""
  with jax.transfer_guard_device_to_host("allow"):
    yield


# ------------------------------------------------------------------ signals

class _StopFlag:
  """SIGTERM or SIGINT sets the flag; the loop checkpoints and exits at the next step.
  A second Ctrl-C stops at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.set = False
    self.name = None
    self._prev = {}

  def install(self):
    def handler(signum, frame):
      if self.set and signum == signal.SIGINT:
        raise KeyboardInterrupt
      self.set = True
      self.name = signal.Signals(signum).name
    for s in self.SIGNALS:
      self._prev[s] = signal.signal(s, handler)

  def restore(self):
    for s, prev in self._prev.items():
      if prev is not None:
        signal.signal(s, prev)
    self._prev = {}


_SIGNAL_CODES = {None: 0, "SIGTERM": 1, "SIGINT": 2}


def _agreed_signal(stop: "_StopFlag") -> str | None:
  """The signal any process received (SIGINT wins over SIGTERM), the same on every
  process: all of them then save the same step and stop (one allgather)."""
  mine = _SIGNAL_CODES.get(stop.name if stop.set else None, 1)
  if jax.process_count() == 1:
    code = mine
  else:
    code = int(np.max(multihost_utils.process_allgather(np.array([mine], np.int32))))
  return {v: k for k, v in _SIGNAL_CODES.items()}[code]


def _same_everywhere(text: str | None) -> str | None:
  """Process 0's text (e.g. an error) on every process, so all stop with the same line."""
  if jax.process_count() == 1:
    return text
  buf = np.zeros(1024, np.uint8)
  if jax.process_index() == 0 and text:
    raw = text.encode()[:1023]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  out = bytes(buf[buf != 0]).decode(errors="replace")
  return out or None


# ------------------------------------------------------------------ the workdir

STATUS_NAME = "status"
STATUSES = ("running", "finished", "preempted", "interrupted")


def write_status(workdir: str, status: str) -> None:
  """WORKDIR/status, one word, written atomically: what cluster launchers read to decide
  whether to requeue (launch/slurm.sbatch requeues unless it says "finished"). A run that
  crashed or was killed still says "running"."""
  assert status in STATUSES, status
  atomic_write_text(os.path.join(workdir, STATUS_NAME), status + "\n")


def read_status(workdir) -> str | None:
  try:
    with open(os.path.join(os.fspath(workdir), STATUS_NAME)) as f:
      return f.read().strip() or None
  except OSError:
    return None


def _claim_workdir(workdir: str):
  """Check and lock the workdir on process 0 (one line naming the workdir or the holder);
  every process stops with the same line."""
  lock, err = None, None
  path = os.path.abspath(str(workdir))
  if jax.process_index() == 0:
    try:
      path = workdir_lib.prepare(path)
      lock = workdir_lib.WorkdirLock(path).acquire()
    except RunError as e:
      err = str(e)
  err = _same_everywhere(err)
  if err:
    if lock is not None:
      lock.release()
    raise RunError(err)
  return path, lock


class _QuietFileHandler(logging.FileHandler):
  """A log file that cannot be written (the disk that just filled up) loses the record
  instead of printing logging's own traceback to the console."""

  def handleError(self, record):
    pass


@contextlib.contextmanager
def _library_logs_to(workdir: str, enabled: bool):
  """Orbax and TensorStore report failures through absl logging (and asyncio, when their
  event loops are collected), a traceback per thread; during training they go to
  WORKDIR/train.log and the user sees one line. After a failure the redirection stays:
  those late messages arrive while the process exits, until the next run in the same
  process (a test, a notebook) takes the redirection over."""
  if not enabled:
    yield
    return
  for name in ("absl", "asyncio"):
    lg = logging.getLogger(name)
    for old in [h for h in lg.handlers if isinstance(h, _QuietFileHandler)]:
      lg.removeHandler(old)
      old.close()
  handler = _QuietFileHandler(os.path.join(workdir, "train.log"), delay=True)
  handler.setLevel(logging.WARNING)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  saved = []
  for name in ("absl", "asyncio"):
    lg = logging.getLogger(name)
    saved.append((lg, lg.propagate))
    lg.addHandler(handler)
    lg.propagate = False
  try:
    yield
  except BaseException:
    raise
  else:
    for lg, propagate in saved:
      lg.removeHandler(handler)
      lg.propagate = propagate
    try:
      handler.close()
    except OSError:
      pass


# ------------------------------------------------------------------ stages

def stage_config(config, stage):
  """A copy of `config` whose batch_size / data.patch_size are the stage's (how a task
  sizes its batch)."""
  if stage.index == 0:
    return config
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.batch_size = stage.batch
    c.data.patch_size = stage.patch
  c.lock()
  return c


def data_config(config, stage):
  """The stage's config for its data source: stage k > 0 draws from its own stream."""
  if stage.index == 0:
    return config
  c = stage_config(config, stage).copy_and_resolve_references()
  with c.unlocked():
    c.seed = int(config.seed) + 1000 * stage.index
  c.lock()
  return c


def _check_layout(config, stages, n_dev, n_proc) -> None:
  for st in stages:
    cfg = stage_config(config, st)
    key = "batch_size" if st.index == 0 else "stages"
    what = "" if st.index == 0 else f" (stage {st.index + 1})"
    if st.batch % n_dev:
      raise ConfigError(f"bad value for config key '{key}': {st.batch}{what} is not "
                        f"divisible by the {n_dev} devices of the mesh")
    if st.batch % n_proc:
      raise ConfigError(f"bad value for config key '{key}': {st.batch}{what} is not "
                        f"divisible by the {n_proc} processes")
    micro_batch_lib.check(cfg, n_dev)


def _build_task(config):
  try:
    return runs.build_task(config)
  except (AttributeError, KeyError) as e:
    key = missing_config_key(e)
    if key is None:
      raise
    raise ConfigError(f"config lacks key '{key}' (needed by task "
                      f"{config.get('task', '?')!r})") from None


# ------------------------------------------------------------------ train

def train(config, workdir: str) -> dict:
  """Train (or resume) `config` in `workdir`. Returns a small summary dict ("signal":
  "SIGTERM"/"SIGINT" when a signal stopped it)."""
  distributed.initialize()
  workdir, lock = _claim_workdir(workdir)
  try:
    with _library_logs_to(workdir, jax.process_index() == 0):
      return _train(config, workdir)
  except UserError:
    raise  # already one line (RunError is also an OSError)
  except OSError as e:  # metrics, TensorBoard, config.json on a full or read-only disk
    reason = checkpoint.io_reason(e)
    if reason is None:
      raise
    kept = checkpoint.intact_text(workdir)
    raise RunError(f"{e.filename or workdir}: {reason}; {kept}; free space and re-run the "
                   "same command to resume") from None
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str) -> dict:
  is_main = jax.process_index() == 0
  n_proc = jax.process_count()
  stages = config_lib.stage_list(config)
  # The data folder against the config, before anything is built: a missing test split
  # or a broken shard must not surface at the first eval.
  sources.check_data(config, ("train", "test"), verify="size")
  for st in stages[1:]:
    sources.check_data(stage_config(config, st), ("train",))
  task = _build_task(config)
  mesh = _make_mesh(config)
  n_dev = jax.device_count()
  _check_layout(config, stages, n_dev, n_proc)

  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps)
  state, state_sharding = init_state(task, tx, config, mesh)
  n_params = state_lib.param_count(state.params)
  params_shapes = jax.eval_shape(lambda p: p, state.params)
  if is_main:
    print(f"jisp train: task={task.name} params={n_params:,} devices={n_dev} "
          f"processes={n_proc} global_batch={config.batch_size} workdir={workdir}",
          flush=True)
    if sharding.fsdp_size(mesh) > 1:
      leaves = jax.tree.leaves(state_sharding.params)
      split = sum("fsdp" in s.spec for s in leaves)
      print(f"jisp train: mesh data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']}: "
            f"{split} of {len(leaves)} parameter arrays sharded over fsdp", flush=True)

  start, data_state = 0, None
  existing = checkpoint.checkpoint_steps(workdir)
  if existing:
    # Refuse a changed config before reading (or overwriting) anything.
    resume.check(workdir, config, existing[-1])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    del state  # its buffers are replaced by the restored ones
    r = checkpoint.restore_verified(workdir, abstract)
    state, data_state, start = r.state, r.data, int(r.step)
    if r.skipped:
      moved = checkpoint.quarantine(workdir, [s for s, _ in r.skipped])
      if n_proc > 1:
        multihost_utils.sync_global_devices("jisp-quarantine")
      if is_main:
        print(f"jisp train: warning: skipped damaged checkpoint "
              f"{checkpoint.describe_skipped(r.skipped)}; resuming from step {start}; the "
              f"damaged ones are kept in {moved}", file=sys.stderr, flush=True)
  if is_main:
    # Only now: a refused or failed resume must leave the run's config.json as it was.
    atomic_write_json(os.path.join(workdir, "config.json"), resume.config_dict(config),
                      indent=2, sort_keys=True)
    write_status(workdir, "running")

  ckpt = checkpoint.Checkpointer(workdir, keep=config.get("keep_checkpoints", 3))
  log = MetricsLog(workdir, is_main, config.num_steps)
  if start:
    log.event(event="resume", step=start)
    if is_main:
      print(f"jisp train: resumed from checkpoint step {start}", flush=True)

  eval_step = distributed.Lockstep(compile_eval_step(task, config), "eval")
  check_state = distributed.Lockstep(guard.check_state_jit, "check")
  eval_batches = None
  g = jax.device_put(guard.init(), sharding.replicated(mesh))
  local_batch0 = config.batch_size // n_proc

  stop = _StopFlag()
  stop.install()
  t_last, step_last = time.time(), start
  stop_signal = None
  last_good = start or None
  step = start
  cur, source, train_step, probe_step = None, None, None, None
  profiler = _StepProfiler(config, workdir)
  try:
    for step in range(start + 1, config.num_steps + 1):
      st = next(s for s in stages if s.start < step <= s.end)
      if cur is None or st.index != cur.index:
        if source is not None:
          source.close()
        cur = st
        source, train_step, probe_step = _enter_stage(
            config, st, task, tx, lr_fn, mesh, state_sharding, data_state, step, is_main,
            len(stages), eval_step, params_shapes)
        data_state = None
      batch = sharding.to_global(source.next(), mesh)
      profiler.before(step)
      state, metrics, g = train_step(state, batch, g)
      profiler.after(step, metrics)

      last = step == config.num_steps
      log_now = step % config.log_every == 0 or last
      # One process alone polls its flag for free; several agree at log steps only.
      if n_proc == 1 or log_now:
        stop_signal = _agreed_signal(stop) if n_proc > 1 else (stop.name if stop.set else None)
      stopping = stop_signal is not None
      ckpt_now = step % config.checkpoint_every == 0 or last or stopping
      eval_now = step % config.eval_every == 0 or last
      if not (log_now or ckpt_now or eval_now):
        continue  # no host read: the next step is dispatched while this one runs

      host = to_host({"guard": g, "metrics": metrics} if log_now else {"guard": g})
      _raise_if_bad(host["guard"], last_good)
      if log_now:
        m = {k: float(v) for k, v in host["metrics"].items()}
        now = time.time()
        sps = (step - step_last) / max(now - t_last, 1e-9)
        m["steps_per_s"] = sps
        m["patches_per_s"] = sps * cur.batch
        # all of this process's threads (input pipeline included): what a CPU budget counts
        m["cpu_s"] = time.process_time()
        t_last, step_last = now, step
        log.write(step, m)
        log.progress(step, {"loss": m["loss"], "lr": m["lr"], "steps/s": sps})

      if ckpt_now:
        # Always checked before a save, whatever the guard saw: the whole state, and the
        # loss the new weights (and their EMA) give on this step's batch.
        (finite, fp), (lp, le) = to_host((
            check_state(state),
            guard.probe_losses(probe_step, state, batch, int(config.seed) + 2000)))
        if not bool(finite) or not (np.isfinite(lp) and np.isfinite(le)):
          what = ("the train state holds non-finite values" if not bool(finite) else
                  f"the weights after step {step} give a non-finite loss ({float(lp)}, EMA "
                  f"{float(le)}): the update diverged")
          raise NonFiniteLoss(f"{what}; training stopped before saving step {step}; "
                              f"{_last_good_text(last_good)}; lower optim.peak_lr or set "
                              "optim.grad_clip_norm")
        with _host_io():
          ckpt.save(step, state, {"source": source.get_state(), "stage": cur.index,
                                  "fingerprint": guard.fingerprint_list(fp)},
                    force=stopping)
        last_good = step

      if eval_now:
        if eval_batches is None:
          eval_batches = _eval_batches(config, local_batch0, mesh)
        ev = _evaluate(eval_step, state.ema_params, eval_batches, config.seed)
        log.write(step, {f"eval/{k}": v for k, v in ev.items()})

      if stopping:
        if is_main:
          if stop_signal == "SIGINT":
            print(f"jisp train: interrupted (SIGINT); checkpoint written at step {step}; "
                  "re-run the same command to resume", file=sys.stderr, flush=True)
          else:
            print(f"jisp train: {stop_signal} received; checkpoint written at step {step}, "
                  "exiting", flush=True)
        break
  finally:
    profiler.close()
    try:
      ckpt.close()
    finally:
      log.close()
      if source is not None:
        source.close()
      stop.restore()
  if is_main:  # only after the last save is complete (ckpt.close waited for it)
    if step >= config.num_steps:
      write_status(workdir, "finished")
    elif stop_signal is not None:
      write_status(workdir, "preempted" if stop_signal == "SIGTERM" else "interrupted")
  return {"step": int(step), "params": n_params, "workdir": workdir,
          "signal": stop_signal}


class _StepProfiler:
  """`profile_steps = "a:b"`: a jax.profiler trace of steps a..b, one folder per process
  under WORKDIR/profile (TensorBoard's profile plugin, xprof or Perfetto read it). The
  trace waits for step b to finish, so it holds the device work, not just the dispatch."""

  def __init__(self, config, workdir: str):
    self.range = config_lib.profile_range(config)
    self.folder = os.path.join(workdir, "profile", f"process{jax.process_index()}")
    self.active = False

  def before(self, step: int) -> None:
    if self.range and step == self.range[0]:
      os.makedirs(self.folder, exist_ok=True)
      jax.profiler.start_trace(self.folder)
      self.active = True

  def after(self, step: int, metrics) -> None:
    if self.active and step == self.range[1]:
      with jax.transfer_guard_device_to_host("allow"):
        jax.block_until_ready(metrics)
      self.close()
      if jax.process_index() == 0:
        print(f"jisp train: profile of steps {self.range[0]}..{self.range[1]} in "
              f"{os.path.dirname(self.folder)}", flush=True)

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()


def _last_good_text(last_good) -> str:
  if last_good is None:
    return "no checkpoint had been written yet"
  return f"the newest checkpoint, step {last_good}, is finite and kept"


def _raise_if_bad(g_host, last_good) -> None:
  bad = guard.describe(g_host)
  if bad:
    raise NonFiniteLoss(f"{bad}; training stopped; {_last_good_text(last_good)}; lower "
                        "optim.peak_lr or set optim.grad_clip_norm")


def _enter_stage(config, st, task, tx, lr_fn, mesh, state_sharding, data_state, step,
                 is_main, n_stages, eval_step, params_shapes=None):
  """(source, compiled step, eval step for the pre-save probe) for stage `st`, the source
  positioned for `step`. The first stage probes with the loop's eval step itself (same
  batch shape as evaluation: one program for both)."""
  cfg = stage_config(config, st)
  stage_task = task if st.index == 0 else type(task)(cfg, task.inputs)
  n_proc = jax.process_count()
  source = sources.make_source(data_config(config, st), "train", local_batch=st.batch // n_proc,
                               process_index=jax.process_index(), process_count=n_proc)
  if data_state is not None and step - 1 > st.start:
    # Resumed inside this stage: continue its stream where the checkpoint left it.
    if int(data_state.get("stage", 0)) != st.index:
      raise RunError(f"checkpoint step {step - 1} was written in stage "
                     f"{int(data_state.get('stage', 0)) + 1}, but the config puts it in "
                     f"stage {st.index + 1}")
    source.set_state(data_state["source"])
  if is_main and n_stages > 1:
    print(f"jisp train: stage {st.index + 1}/{n_stages}: patch {st.patch}, global batch "
          f"{st.batch}, steps {st.start + 1}-{st.end}", flush=True)
  probe_step = eval_step if st.index == 0 else distributed.Lockstep(
      compile_eval_step(stage_task, cfg), f"eval-stage{st.index}")
  micro = micro_batch_lib.resolve(stage_task, cfg, mesh.size, params_shapes=params_shapes)
  if is_main and micro:
    how = "auto" if micro_batch_lib.requested(cfg) == micro_batch_lib.AUTO else "micro_batch"
    print(f"jisp train: {cfg.batch_size // micro} micro-batches of {micro} examples per "
          f"step ({how})", flush=True)
  step_fn = distributed.Lockstep(
      compile_train_step(stage_task, tx, lr_fn, cfg, mesh, state_sharding, micro),
      f"train-stage{st.index}")
  return source, step_fn, probe_step


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
    for k, v in to_host(m).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / len(batches) for k, v in totals.items()}
