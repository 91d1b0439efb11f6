"""The device mesh and how arrays are laid out on it.

One 2-D mesh over every device of every process: axes ("data", "fsdp"). A batch is split
over both axes (every device holds its own examples); parameters and optimiser state are
replicated, or with `fsdp > 1` sharded along "fsdp" by `param_shardings`'s rule
(big_vision's infer-sharding style: each large array on its largest axis that the fsdp
size divides, small arrays replicated). With fsdp = 1 this is the classic data-parallel
mesh.
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this (elements) stay replicated: sharding them saves nothing and
# costs a collective per use.
MIN_SHARD_SIZE = 2 ** 14


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> jax.sharding.Mesh:
  n = num_devices or jax.device_count()
  fsdp = int(fsdp or 1)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh: fsdp={fsdp} must divide the {n} devices")
  # Axis types stated explicitly: make_mesh's default changed to Explicit in new JAX;
  # we shard through jit's in/out shardings (Auto).
  return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[:n])


def mesh_from_config(config, num_devices: int | None = None) -> jax.sharding.Mesh:
  """The mesh a config asks for (`mesh.fsdp`, default 1)."""
  m = config.get("mesh") if hasattr(config, "get") else None
  return make_mesh(num_devices, int(m.get("fsdp", 1)) if m is not None else 1)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_size(mesh) -> int:
  return int(mesh.shape.get("fsdp", 1))


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: int = MIN_SHARD_SIZE) -> P:
  """The rule for one array: its largest axis that `fsdp` divides, if the array has at
  least `min_size` elements; else replicated."""
  if fsdp <= 1 or int(np.prod(shape or (1,))) < min_size:
    return P()
  axes = [i for i, d in enumerate(shape) if d % fsdp == 0]
  if not axes:
    return P()
  best = max(axes, key=lambda i: (shape[i], i))
  return P(*([None] * best + ["fsdp"]))


def param_shardings(tree, mesh, min_size: int = MIN_SHARD_SIZE, replicate: Sequence[str] = ()):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) by the rule above;
  leaves whose key path matches one of the `replicate` regexes stay replicated."""
  fsdp = fsdp_size(mesh)
  patterns = [re.compile(r) for r in replicate]

  def one(path, leaf):
    name = jax.tree_util.keystr(path)
    if any(p.search(name) for p in patterns):
      return replicated(mesh)
    return NamedSharding(mesh, leaf_spec(tuple(np.shape(leaf)), fsdp, min_size))
  return jax.tree_util.tree_map_with_path(one, tree)


def to_global(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> one global jax.Array per key, split over the batch axes."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
          for k, v in local_batch.items()}
