"""Evaluate a network on a large batch as a loop over cache-sized micro-batches.

On CPUs a U-Net's per-patch working set (XLA temporaries, the attention matrix at 32x32)
outgrows the caches once a core holds more than a patch or two (README "Speed" has the
measurements). Looping over micro-batches inside a compiled sampler or train step keeps
the working set in cache while the sampler's own arithmetic still runs on the whole batch.

The split is strided, not blocked: micro-batch i holds rows i, i+n, i+2n, ... . A batch
sharded in contiguous blocks over a mesh axis then gives every micro-batch an equal share
on every device, so the loop never moves data between devices.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jisp.core.errors import OptionError


def split(a, size: int):
  """(B, ...) -> (B // size, size, ...): micro-batch i holds rows i, i+n, i+2n, ..."""
  b = a.shape[0]
  if b % size:
    raise ValueError(f"micro-batch size {size} does not divide the batch of {b}")
  return jnp.swapaxes(a.reshape((size, b // size) + a.shape[1:]), 0, 1)


def merge(a):
  """Inverse of `split`: (n, size, ...) -> (n * size, ...) in the original row order."""
  return jnp.swapaxes(a, 0, 1).reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def microbatched(fn: Callable, size: int | None) -> Callable:
  """fn(*arrays) -> array(s), each array with a leading batch axis B; evaluated `size` rows
  at a time when B is a larger multiple of `size` (unchanged otherwise: None, 0, or
  B <= size).
  """
  if not size:
    return fn
  size = int(size)

  def run(*args):
    if args[0].shape[0] <= size:
      return fn(*args)
    out = jax.lax.map(lambda xs: fn(*xs), tuple(split(a, size) for a in args))
    return jax.tree.map(merge, out)

  return run


# Patches per device per network call on CPU (README "Speed": the sweep that chose it);
# accelerators want the whole batch.
CPU_CHUNK_PER_DEVICE = 2


def resolve_chunk(chunk, n_dev: int, backend: str | None = None) -> int | None:
  """Global micro-batch size from 'auto', an int, or 0 / None / 'none' (whole batch)."""
  if chunk in (None, 0, "0", "none", "off"):
    return None
  if chunk == "auto":
    backend = backend or jax.default_backend()
    return CPU_CHUNK_PER_DEVICE * n_dev if backend == "cpu" else None
  try:
    size = int(chunk)
  except (TypeError, ValueError):
    raise OptionError(f"net chunk must be 'auto', 'none' or a positive integer, got "
                     f"{chunk!r}") from None
  if size < 0 or size % n_dev:
    raise OptionError(f"net chunk {size} must be a positive multiple of the {n_dev} devices")
  return size or None


def chunk_for(batch: int, chunk: int | None, n_dev: int) -> int | None:
  """The micro-batch for a call on `batch` examples (a multiple of n_dev): the largest
  multiple of the devices that divides the batch and is at most `chunk` (None: whole)."""
  if not chunk or batch <= chunk:
    return None
  return next(size for size in range(chunk, 0, -n_dev) if batch % size == 0)
