"""Single-head softmax attention whose backward pass recomputes the probabilities.

Differentiating `softmax(q k^T / sqrt(c)) v` as written keeps the (T, T) probability
matrix of every attention layer alive from the forward pass to the backward one: at the
U-Net's 32x32 stage that is 1024x1024 floats per example and layer, written once and read
back after the rest of the network has run, long out of cache. Here the forward pass keeps
only the output and each query's log-sum-exp, and the backward pass recomputes the
probabilities block by block of `block` queries (FlashAttention's backward, written for
XLA: each block's scores, probabilities and their gradient are a few MiB and are consumed
where they are made). Under differentiation the forward divides by the softmax's sum after
the product with v, on (T, C) rather than (T, T) values; undifferentiated (sampling) it is
the plain expression, which XLA fuses whole.

Values equal `jax.nn.softmax` attention up to rounding and the gradients are the exact
ones (tests/test_attention.py). `grad`: "recompute" (this), or "xla" (the plain expression,
differentiated by JAX). The recomputing backward is a custom_vjp, so it serves reverse-mode
differentiation (training) only: forward mode (jax.jvp, jax.jacfwd) needs "xla".
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

GRADS = ("recompute", "xla")

# queries per block of the backward pass: a block's (block, T) scores for a few examples
# stay within a core's cache at T = 1024
DEFAULT_BLOCK = 256


def check_grad(value: str, key: str = "model.attention_grad") -> str:
  if value not in GRADS:
    from jisp.core.errors import ConfigError
    raise ConfigError(f"bad value for config key '{key}': {value!r} (expected one of "
                      f"{', '.join(GRADS)})")
  return value


def attention_fn(grad: str):
  """The attention function (q, k, v) -> out that `grad` names."""
  return attention if check_grad(grad) == "recompute" else softmax_attention


def softmax_attention(q, k, v):
  """The plain expression, every intermediate left to JAX's autodiff."""
  logits = _scores(q, k) / math.sqrt(q.shape[-1])
  p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bqk,bkc->bqc", p, v, preferred_element_type=_acc(q)).astype(q.dtype)


def _acc(x):
  """The type softmax and products accumulate in: float32, or wider inputs' own."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _scores(q, k):
  """(B, Tq, C) x (B, Tk, C) -> (B, Tq, Tk) dot products, accumulated as `_acc` says."""
  return jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=_acc(q))


def _forward(q, k, v):
  scale = 1.0 / math.sqrt(q.shape[-1])
  s = _scores(q * jnp.asarray(scale, q.dtype), k)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  z = jnp.sum(e, axis=-1, keepdims=True)
  o = jnp.einsum("bqk,bkc->bqc", e.astype(v.dtype), v, preferred_element_type=_acc(q))
  o = (o / z).astype(q.dtype)
  return o, (m + jnp.log(z))[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q, k, v, block: int = DEFAULT_BLOCK):
  """softmax(q k^T / sqrt(C)) v for q, k, v of shape (B, T, C); the softmax in float32."""
  # undifferentiated (sampling), the plain expression: XLA fuses it whole
  return softmax_attention(q, k, v)


def _attention_fwd(q, k, v, block):
  o, lse = _forward(q, k, v)
  return o, (q, k, v, o, lse)


def _attention_bwd(block, res, do):
  q, k, v, o, lse = res
  scale = 1.0 / math.sqrt(q.shape[-1])
  qs = q * jnp.asarray(scale, q.dtype)
  # softmax backward: ds = p * (dp - sum_k p dp), and sum_k p dp = sum_c do * o
  delta = jnp.sum(do.astype(_acc(q)) * o.astype(_acc(q)), axis=-1)
  t = q.shape[1]
  dqs, dk, dv = [], None, None
  for i in range(0, t, block):
    sl = slice(i, min(i + block, t))
    p = jnp.exp(_scores(qs[:, sl], k) - lse[:, sl, None])
    dob = do[:, sl]
    dp = jnp.einsum("bqc,bkc->bqk", dob, v, preferred_element_type=_acc(q))
    ds = (p * (dp - delta[:, sl, None])).astype(q.dtype)
    p = p.astype(q.dtype)
    dv_i = jnp.einsum("bqk,bqc->bkc", p, dob, preferred_element_type=_acc(q))
    dk_i = jnp.einsum("bqk,bqc->bkc", ds, qs[:, sl], preferred_element_type=_acc(q))
    dqs.append(jnp.einsum("bqk,bkc->bqc", ds, k, preferred_element_type=_acc(q)))
    dv = dv_i if dv is None else dv + dv_i
    dk = dk_i if dk is None else dk + dk_i
  dq = (jnp.concatenate(dqs, axis=1) if len(dqs) > 1 else dqs[0]) * scale
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


attention.defvjp(_attention_fwd, _attention_bwd)
