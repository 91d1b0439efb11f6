"""TrainState: everything that a checkpoint must hold to resume bit-for-bit."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of optimizer updates applied
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array           # raw uint32 key data (checkpointable as a plain array)


def create(task, tx, rng) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  params = task.init_params(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), rng=state_rng)


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
