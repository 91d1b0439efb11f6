"""Orbax checkpoints of the TrainState plus the data position, under WORKDIR/checkpoints.

Writing. Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save never leaves a checkpoint that looks valid; saves run asynchronously
while training continues. The loop saves only a state it has just checked to be finite,
and stores the state's content fingerprint (jisp.train.guard) with the data position.
A full disk or a read-only file system during a save is one RunError line naming the
checkpoint folder and the steps that are still intact; the half-written temporary
directory is removed.

Reading. `restore_verified` tries the finished checkpoints newest first and takes the
first that restores, holds only finite values and matches its fingerprint; the ones it
skipped are returned with a short reason each (truncated, missing or corrupted files,
damaged metadata, ...). Training and the inference tools (`restore_params`) both read
through it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import logging
import os
import shutil
import sys
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from jisp.core.errors import RunError
from jisp.train import guard, optim, state as state_lib

CORRUPT_DIR = "checkpoints.corrupt"


def checkpoint_dir(workdir) -> str:
  return os.path.join(os.path.abspath(str(workdir)), "checkpoints")


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints of a run, oldest first."""
  d = checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


# ---------------------------------------------------------------------------- writing

def io_reason(e: BaseException) -> str | None:
  """'no space left on device' / 'read-only file system' / ... when `e` (or what caused
  it) is a storage failure; None for anything else (a bug keeps its traceback)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _ERRNO_WORDS:
      return _ERRNO_WORDS[e.errno]
    text = str(e)
    for needle, words in _TEXT_WORDS:
      if needle in text:
        return words
    e = e.__cause__ or e.__context__
  return None


_ERRNO_WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
_TEXT_WORDS = (("No space left on device", "no space left on device"),
               ("os_error_code='28'", "no space left on device"),
               ("Disk quota exceeded", "disk quota exceeded"),
               ("Read-only file system", "read-only file system"),
               ("Permission denied", "permission denied"))


def intact_text(workdir) -> str:
  """'checkpoints 2, 4 are intact' for messages after a failed write."""
  steps = checkpoint_steps(workdir)
  if not steps:
    return "no checkpoint was written yet"
  if len(steps) == 1:
    return f"checkpoint {steps[0]} is intact"
  return f"checkpoints {', '.join(map(str, steps))} are intact"


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
  """The RuntimeError a TensorStore write thread raises when it reports back to Orbax's
  save loop after that loop has closed (the save already failed)."""
  return (exc_type is RuntimeError and str(exc) == "Event loop is closed"
          and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def _is_abandoned_shard_read(unraisable) -> bool:
  """The error each still-pending shard read of a damaged checkpoint raises when Orbax's
  restore has already failed and its coroutine is closed by the garbage collector; the
  failure itself is reported (that checkpoint is skipped, or the run stops with one line)."""
  return (getattr(unraisable.object, "__name__", None) == "_read_array_index_and_device_put"
          and str(unraisable.exc_value).startswith("Encountered error while reading array"))


def _silence_orbax_leftovers() -> None:
  """When an async save fails, writes still in flight finish on TensorStore's own threads
  and try to wake the save loop, which has closed; each such error reaches
  sys.unraisablehook (raised from C, with no Python caller to catch it) and would print a
  traceback before and after the failure surfaces as one RunError line. Likewise the shard
  reads a failed restore of a damaged checkpoint leaves behind (raised as the collector
  closes them, or warned about as never awaited). Those go unprinted; every other
  unraisable error prints as before."""
  warnings.filterwarnings(
      "ignore", message="coroutine '_read_array_index_and_device_put' was never awaited",
      category=RuntimeWarning)
  previous = sys.unraisablehook
  if getattr(previous, "_jisp_orbax_leftovers", False):
    return

  def hook(unraisable):
    if not (_is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                     unraisable.exc_traceback)
            or _is_abandoned_shard_read(unraisable)):
      previous(unraisable)

  hook._jisp_orbax_leftovers = True
  sys.unraisablehook = hook


def _write_each_array_from_one_replica() -> None:
  """On CPU, Orbax's default replica-parallel save slices every replicated array into
  one piece per device before writing it, and each slice shape is a fresh XLA compile at
  the first save of a process. CPU devices share one host memory, so splitting the write
  buys nothing there; the replica that holds each shard writes it whole, as Orbax does by
  default on GPU. The files are the same either way (restore does not care)."""
  if jax.default_backend() != "cpu":
    return
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if not getattr(current, "_use_replica_parallel", False):
    return
  ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          use_replica_parallel=False,
          array_metadata_store=getattr(current, "_array_metadata_store", None)),
      override=True)


class Checkpointer:
  """Async Orbax saves with storage failures turned into one RunError line."""

  def __init__(self, workdir, keep: int = 3, async_save: bool = True):
    self.workdir = os.path.abspath(str(workdir))
    self.directory = checkpoint_dir(workdir)
    self._pending: int | None = None
    self._failed = False
    _silence_orbax_leftovers()
    _write_each_array_from_one_replica()
    with self._storage("creating the checkpoint folder"):
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=int(keep), create=True, enable_async_checkpointing=async_save))

  @contextlib.contextmanager
  def _storage(self, doing: str):
    try:
      yield
    except Exception as e:
      reason = io_reason(e)
      if reason is None:
        raise
      self._failed = True
      # Orbax's abandoned write coroutines would warn at exit that they never ran.
      warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                              category=RuntimeWarning)
      if jax.process_index() == 0:
        for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
          shutil.rmtree(tmp, ignore_errors=True)  # give back the space a partial save took
      kept = intact_text(self.workdir)
      raise RunError(f"{self.directory}: {reason} while {doing}; {kept}; free space (or "
                     "fix the folder) and re-run the same command to resume") from None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    # An async save that failed surfaces here, at the next save: name that step.
    doing = f"writing checkpoint step {self._pending if self._pending is not None else step}"
    with self._storage(doing):
      saved = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=ocp.args.JsonSave(data_state)),
          force=force)
    self._pending = step
    return saved

  def wait(self) -> None:
    with self._storage(f"writing checkpoint step {self._pending}"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:
        if not self._failed:
          raise


# ---------------------------------------------------------------------------- reading

@dataclasses.dataclass
class Restored:
  step: int
  state: object
  data: dict
  skipped: list  # [(step, reason)], newest first


def _short_reason(e: BaseException) -> str:
  """A few words for why a checkpoint did not restore (Orbax/TensorStore errors are
  pages of JSON; the user needs to know what kind of damage it is)."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen and len(chain) < 8:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  text = " | ".join(f"{type(x).__name__}: {x}" for x in chain)
  for needle, words in (
      ("Truncated Zstd", "a data file is missing or truncated"),
      ("OUT_OF_RANGE", "a data file is truncated"),
      ("Requested byte range", "a data file is truncated"),
      ("Data corruption", "a data file is corrupted"),
      ("ZSTD", "a data file is corrupted"),
      ("Error reading", "a file cannot be read"),
      ("NOT_FOUND", "a data file is missing"),
      ("No such file", "a file is missing"),
      ("not found in the checkpoint", "an item is missing"),
      ("pytree structure", "its metadata is damaged or missing"),
      ("Expecting value", "a metadata file is not valid JSON"),
      ("JSONDecodeError", "a metadata file is not valid JSON"),
      ("DATA_LOSS", "a data file is corrupted"),
      ("FAILED_PRECONDITION", "a data file is corrupted"),
      ("INVALID_ARGUMENT", "a data file is corrupted"),
      ("Encountered error while reading", "a data file cannot be read")):
    if needle in text:
      return words
  first = text.splitlines()[0] if text else "unknown error"
  return first if len(first) <= 100 else first[:97] + "..."


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs each failed read at ERROR with a traceback; the caller reports the
  reason in one line instead."""
  lg = logging.getLogger("absl")
  old = lg.level
  lg.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    lg.setLevel(old)


def _agree(ok: bool) -> bool:
  """True only if every process succeeded (all of them restore the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.array([int(ok)], np.int32))
  return bool(np.all(flags))


def _check(state):
  from jisp.train import distributed
  global _CHECK_LOCKSTEP
  if _CHECK_LOCKSTEP is None:
    _CHECK_LOCKSTEP = distributed.Lockstep(guard.check_state_jit, "restore-check")
  return _CHECK_LOCKSTEP(state)


_CHECK_LOCKSTEP = None


def _try_restore(path: str, abstract):
  """(state, data) of one checkpoint directory, or (None, reason)."""
  if not os.path.isdir(os.path.join(path, "state")):
    return None, "its state/ folder is missing"
  try:
    with _quiet_orbax(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      out = ckptr.restore(path, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    state, data = out["state"], out["data"]
  except Exception as e:  # any damage: the caller falls back to an older checkpoint
    return None, _short_reason(e)
  if not isinstance(data, dict):
    return None, "its data item is not a JSON object"
  finite, fp = jax.device_get(_check(state))
  if not bool(finite):
    return None, "it holds non-finite values"
  saved_fp = data.get("fingerprint")
  if saved_fp is not None and [int(v) for v in saved_fp] != guard.fingerprint_list(fp):
    return None, "its content does not match its fingerprint (corrupted data)"
  return (state, data), None


def restore_verified(workdir, abstract_state, steps: list[int] | None = None) -> Restored:
  """The newest intact checkpoint among `steps` (default: all finished ones), restored
  into `abstract_state` (ShapeDtypeStructs with shardings). RunError, one line listing
  what was wrong with each, when none is intact."""
  steps = checkpoint_steps(workdir) if steps is None else list(steps)
  _silence_orbax_leftovers()
  skipped = []
  for step in sorted(steps, reverse=True):
    path = os.path.join(checkpoint_dir(workdir), str(step))
    got, reason = _try_restore(path, abstract_state)
    if not _agree(got is not None):
      skipped.append((step, reason or "it does not restore on another process"))
      continue
    state, data = got
    return Restored(step, state, data, skipped)
  listed = "; ".join(f"step {s}: {r}" for s, r in skipped) or "none found"
  raise RunError(f"{checkpoint_dir(workdir)}: no intact checkpoint ({listed}); the run "
                 "cannot be resumed or used: restore the folder from a backup or train "
                 "again in a new --workdir")


def describe_skipped(skipped) -> str:
  return ", ".join(f"step {s} ({r})" for s, r in skipped)


def quarantine(workdir, steps) -> str | None:
  """Move damaged checkpoints out of Orbax's folder (into WORKDIR/checkpoints.corrupt), so
  new saves of those steps cannot collide with them and nothing is deleted."""
  if not steps or jax.process_index() != 0:
    return None
  dest_root = os.path.join(os.path.abspath(str(workdir)), CORRUPT_DIR)
  os.makedirs(dest_root, exist_ok=True)
  for s in steps:
    dest, k = os.path.join(dest_root, str(s)), 1
    while os.path.exists(dest):
      dest, k = os.path.join(dest_root, f"{s}.{k}"), k + 1
    os.replace(os.path.join(checkpoint_dir(workdir), str(s)), dest)
  return dest_root


def restore_params(workdir, task, use_ema: bool = True, step: int | None = None,
                   warn=None):
  """(step, params) of a run's newest intact (or the given) checkpoint, for inference.

  Restores onto this process's first device whatever topology wrote the checkpoint (a
  pod, 8 fake CPU devices, 2 processes): the target tree is built from the task and the
  optimiser of its config, with explicit single-device shardings. Damaged newer
  checkpoints are skipped with one warning line (`warn`, default stderr).
  """
  steps = checkpoint_steps(workdir)
  if not steps:
    raise RunError(f"{workdir}: no checkpoint in {checkpoint_dir(workdir)} (train first)")
  if step is not None:
    if int(step) not in steps:
      raise RunError(f"{workdir}: no checkpoint of step {step} (have: "
                     f"{', '.join(map(str, steps))})")
    steps = [int(step)]
  tx, _ = optim.make_optimizer(task.config.optim, task.config.num_steps)
  shapes = jax.eval_shape(functools.partial(state_lib.create, task, tx), jax.random.PRNGKey(0))
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), shapes)
  r = restore_verified(workdir, abstract, steps)
  if r.skipped:
    msg = (f"warning: skipped damaged checkpoint {describe_skipped(r.skipped)}; using step "
           f"{r.step}")
    (warn or (lambda m: print(f"jisp: {m}", file=sys.stderr, flush=True)))(msg)
  return r.step, (r.state.ema_params if use_ema else r.state.params)
