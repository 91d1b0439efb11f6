"""Single-head softmax attention whose backward pass recomputes the probabilities.

Differentiating `softmax(q k^T / sqrt(c)) v` as written keeps the (T, T) probability
matrix of every attention layer alive from the forward pass to the backward one: at the
U-Net's 32x32 stage that is 1024x1024 floats per example and layer, written once and read
back after the rest of the network has run, long out of cache. Here the forward pass keeps
only the output and each query's log-sum-exp, and the backward pass recomputes the
probabilities block by block of `block` queries (FlashAttention's backward, written for
XLA: each block's scores, probabilities and their gradient are a few MiB and are consumed
where they are made). The backward builds those blocks transposed, keys by queries, so
that each of its five products is one XLA:CPU runs on its fast matmul path. Under
differentiation the forward divides by the softmax's sum after the product with v, on
(T, C) rather than (T, T) values; undifferentiated (sampling) it is the plain expression,
which XLA fuses whole.

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
  # The (T, T) matrices are built keys-major, (Tk, Tq): then every large product reads its
  # left operand row by row. Products that contract the rows of their left operand
  # (p^T do, ds^T q) fall outside XLA:CPU's fast matmul path, at about half its rate.
  q, k, v, o, lse = res
  scale = 1.0 / math.sqrt(q.shape[-1])
  acc = _acc(q)
  qs = q * jnp.asarray(scale, q.dtype)
  # softmax backward: ds = p * (dp - sum_k p dp), and sum_k p dp = sum_c do * o
  delta = jnp.sum(do.astype(acc) * o.astype(acc), axis=-1)
  kt = jnp.swapaxes(k, 1, 2)  # (B, C, Tk): dq^T = k^T ds^T is then an ordinary product
  t = q.shape[1]
  dqts, dk, dv = [], None, None
  for i in range(0, t, block):
    sl = slice(i, min(i + block, t))
    dob = do[:, sl]
    pt = jnp.exp(jnp.einsum("bkc,bqc->bkq", k, qs[:, sl], preferred_element_type=acc)
                 - lse[:, None, sl])
    dpt = jnp.einsum("bkc,bqc->bkq", v, dob, preferred_element_type=acc)
    dst = (pt * (dpt - delta[:, None, sl])).astype(q.dtype)
    pt = pt.astype(q.dtype)
    dv_i = jnp.einsum("bkq,bqc->bkc", pt, dob, preferred_element_type=acc)
    dk_i = jnp.einsum("bkq,bqc->bkc", dst, qs[:, sl], preferred_element_type=acc)
    dqts.append(jnp.einsum("bck,bkq->bcq", kt, dst, preferred_element_type=acc))
    dv = dv_i if dv is None else dv + dv_i
    dk = dk_i if dk is None else dk + dk_i
  dqt = jnp.concatenate(dqts, axis=2) if len(dqts) > 1 else dqts[0]
  dq = jnp.swapaxes(dqt, 1, 2) * scale
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


attention.defvjp(_attention_fwd, _attention_bwd)
