"""What a trainable system provides to the one train loop.

A task is a small object built from the config. The loop owns sharding, optimisation,
EMA, checkpoints, logging and data; the task only says how to build parameters, what the
loss is and how to evaluate. Later systems (flow ISP, DTDM, SSDNet) are new tasks, the
loop stays as it is.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import jax

Params = Any
Batch = Mapping[str, jax.Array]


class Task(Protocol):
  name: str

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes/dtypes of one global batch (used to init and to benchmark)."""

  def init_params(self, rng: jax.Array) -> Params:
    ...

  def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool = True
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss (mean over the global batch) and auxiliary scalar metrics."""

  def eval_metrics(self, params: Params, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Scalar metrics on a held-out batch; the loop averages them over eval batches."""
