"""On-device checks of the train state: a NaN/inf guard and a content fingerprint.

The guard is a tiny pytree that every compiled train step updates: it remembers the
first step whose loss or gradient norm was not finite, and which. The loop reads it
only when it touches the host anyway (log, eval and checkpoint steps, the last step), so
steps stay asynchronous: dispatch runs ahead of the device. Weights that an update made
unusable show up as a non-finite loss one step later; and before every save the loop
checks the whole state (`check_state`) and the loss of the new parameters and of their
EMA on the step's batch (`probe_losses`), so a checkpoint is only written from weights that work.

The fingerprint is two wrapping uint32 sums over the bit patterns of every array of the
state (one weighted by position). Integer sums are exact and order-free, so the value
is the same on any mesh, device count or process count; a restore recomputes it and any
changed element (flipped byte, zeroed or truncated file that still decodes) changes it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOSS, GRAD_NORM = 1, 2
WHAT = {LOSS: "loss", GRAD_NORM: "gradient norm"}


def init():
  """No bad step yet (first_bad = 0: steps count from 1)."""
  return {"first_bad": jnp.zeros((), jnp.int32), "what": jnp.zeros((), jnp.int32)}


def update(g, step, loss, grad_norm):
  """The guard after `step` (jit-traced inside the train step: two scalar tests)."""
  what = (jnp.where(jnp.isfinite(loss), 0, LOSS)
          | jnp.where(jnp.isfinite(grad_norm), 0, GRAD_NORM)).astype(jnp.int32)
  first = (g["first_bad"] == 0) & (what != 0)
  return {"first_bad": jnp.where(first, step.astype(jnp.int32), g["first_bad"]),
          "what": jnp.where(first, what, g["what"])}


def describe(g_host: dict) -> str | None:
  """'non-finite loss at step 7' for a host copy of a tripped guard, or None."""
  step = int(g_host["first_bad"])
  if step == 0:
    return None
  what = int(g_host["what"])
  names = [n for bit, n in WHAT.items() if what & bit]
  return f"non-finite {' and '.join(names)} at step {step}"


def _bits(x) -> jax.Array:
  """The bit pattern of every element as uint32 (narrower types widened)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  width = x.dtype.itemsize * 8
  if width > 32:
    raise TypeError(f"cannot fingerprint {x.dtype} arrays")
  u = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width])
  return u.astype(jnp.uint32).ravel()


# Exponent bits of each float type: all ones = inf or NaN.
_EXPONENT = {jnp.dtype(jnp.float32): 0x7F800000, jnp.dtype(jnp.bfloat16): 0x7F80,
             jnp.dtype(jnp.float16): 0x7C00}


def check_state(tree):
  """(all float arrays finite, uint32[2] fingerprint) of `tree`: what is verified before
  a save and after a restore.

  The leaves are raveled and concatenated per dtype first and only then bit-cast, so the
  program is one concatenation and a few fused reductions per dtype: XLA:CPU compiles a
  per-leaf version (hundreds of bitcasts and reductions) several times slower. Finiteness
  is read off the same bits (exponent all ones).
  """
  groups: dict = {}
  for x in jax.tree.leaves(tree):
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    groups.setdefault(jnp.dtype(x.dtype), []).append(x.ravel())
  fa = jnp.zeros((), jnp.uint32)
  fb = jnp.zeros((), jnp.uint32)
  finite = jnp.array(True)
  offset = 0
  for dt, xs in groups.items():
    u = _bits(jnp.concatenate(xs) if len(xs) > 1 else xs[0])
    w = (jnp.arange(u.size, dtype=jnp.uint32) + jnp.uint32(offset % 2**32)) * jnp.uint32(2) \
        + jnp.uint32(1)
    fa = fa + jnp.sum(u * w, dtype=jnp.uint32)
    fb = fb + (jnp.sum(u, dtype=jnp.uint32) ^ jnp.uint32(u.size % 2**32))
    if dt in _EXPONENT:
      mask = jnp.uint32(_EXPONENT[dt])
      finite = finite & ~jnp.any((u & mask) == mask)
    offset += int(u.size)
  return finite, jnp.stack([fa, fb])


# One jitted check for the whole process: the loop's pre-save check and every restore
# share its compiled programs (one per state structure and layout).
check_state_jit = jax.jit(check_state)


def fingerprint(tree) -> jax.Array:
  """uint32[2] content fingerprint of every array in `tree` (see the module docstring)."""
  return check_state(tree)[1]


def fingerprint_list(fp) -> list[int]:
  return [int(v) for v in np.asarray(fp)]


def probe_losses(eval_step, state, batch, seed: int):
  """(loss of the new params, loss of their EMA) on `batch` with a fixed key, through the
  loop's own compiled eval step (no extra program to compile): run before a save, so
  weights that no longer give a finite loss (an update that exploded them while staying
  finite) are never checkpointed."""
  rng = jax.random.PRNGKey(seed)
  return eval_step(state.params, batch, rng)["loss"], eval_step(state.ema_params, batch, rng)["loss"]
