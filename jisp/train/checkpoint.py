"""Orbax checkpoints of the TrainState plus the data position, under WORKDIR/checkpoints.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash mid-save never leaves a checkpoint that looks valid; saves run asynchronously
while training continues.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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


def restore_params(workdir, task, use_ema: bool = True):
  """The (EMA) params of the latest checkpoint of a run, for inference tools.

  Restores onto this process's first device whatever topology wrote the checkpoint (a
  pod, 8 fake CPU devices, 2 processes): the target tree is built from the task and the
  optimiser of its config, with explicit single-device shardings.
  """
  import functools
  from jisp.train import optim, state as state_lib
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{workdir}: no checkpoints directory (train first)")
  mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir))
  step = mngr.latest_step()
  if step is None:
    mngr.close()
    raise FileNotFoundError(f"{workdir}: no checkpoint found in {ckpt_dir}")
  tx, _ = optim.make_optimizer(task.config.optim, task.config.num_steps)
  shapes = jax.eval_shape(functools.partial(state_lib.create, task, tx), jax.random.PRNGKey(0))
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), shapes)
  tree = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  mngr.close()
  return step, (tree.ema_params if use_ema else tree.params)
