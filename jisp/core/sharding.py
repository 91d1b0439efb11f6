"""The one device mesh: a 1-D 'data' axis over every device of every process."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  n = num_devices or jax.device_count()
  # Axis types stated explicitly: make_mesh's default changed to Explicit in new JAX;
  # we shard through jit's in/out shardings (Auto), the classic data-parallel recipe.
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> one global jax.Array per key, sharded on 'data'."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
          for k, v in local_batch.items()}
