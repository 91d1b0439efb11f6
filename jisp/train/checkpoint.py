"""Orbax checkpoints of the TrainState plus the data position, under WORKDIR/checkpoints.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash mid-save never leaves a checkpoint that looks valid; saves run asynchronously
while training continues.
"""
from __future__ import annotations

import functools
import os

import jax
import orbax.checkpoint as ocp

from jisp.core.errors import RunError
from jisp.train import optim, state as state_lib


class Checkpointer:
  def __init__(self, workdir, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)),
        force=force)

  def restore(self, step: int, state_like):
    """Restore into the shapes, dtypes and shardings of `state_like` (arrays or abstract)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like)
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints of a run, oldest first."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def restore_params(workdir, task, use_ema: bool = True, step: int | None = None):
  """(step, params) of a run's latest (or given) checkpoint, for inference tools.

  Only the `state` item is read (the data position is the train loop's business). Restores
  onto this process's first device whatever topology wrote the checkpoint (a pod, 8 fake
  CPU devices, 2 processes): the target tree is built from the task and the optimiser of
  its config, with explicit single-device shardings.
  """
  steps = checkpoint_steps(workdir)
  if not steps:
    raise RunError(f"{workdir}: no checkpoint in {os.path.join(workdir, 'checkpoints')} "
                   "(train first)")
  step = steps[-1] if step is None else int(step)
  tx, _ = optim.make_optimizer(task.config.optim, task.config.num_steps)
  shapes = jax.eval_shape(functools.partial(state_lib.create, task, tx), jax.random.PRNGKey(0))
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), shapes)
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path, abstract)
  return step, (tree.ema_params if use_ema else tree.params)
