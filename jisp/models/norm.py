"""Group normalisation written so that XLA:CPU reduces and rescales at memory speed.

`flax.linen.GroupNorm` reshapes an NHWC activation to (N, H, W, G, C/G) and reduces over
(H, W, C/G); it then normalises with the group statistics broadcast back through the
same reshape. XLA:CPU emits both as loops over a 5-D index space that do not vectorise
along the channels, and the norms (fused with the swish after them) were among the step's
heaviest elementwise instructions. Here the reductions run over the spatial axes only,
keeping the channels contiguous (per-channel sums of x and x^2), the groups are summed in
the small (N, C) result, and the normalisation is folded into one per-channel scale and
shift, so the only full-size work is two reductions and one multiply-add.

The statistics are flax's with `use_fast_variance=True` (its default): var = E[x^2] -
E[x]^2 clipped at zero, in float32 whatever the compute dtype, epsilon 1e-6. The module's
parameters are flax's too (`scale` and `bias`, shape (C,)) and it auto-names as flax's does
(`GroupNorm_0`), so parameter trees and checkpoints do not change. Values equal flax's up to
summation order (tests/test_norm.py).

The module also applies the activation that follows it in the networks (`activation=
"swish"`), and differentiates norm and activation as one recomputed unit (jax.checkpoint):
the backward pass keeps only the input x and recomputes the statistics, the normalised
values and the activation from it. Left to autodiff, the forward pass would store x^2,
the normalised tensor and the activation's own intermediates, each the size of x, and the
backward pass would read them back; on CPUs whose memory bandwidth is the limit, writing
and re-reading those full-size tensors cost more than recomputing them (README, "Speed").
Values are unchanged; the saved residuals are pinned by tests/test_norm.py.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS = {None: None, "swish": nn.swish}


def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-6, dtype=None):
  """Normalise `x` (N, ..., C) over its non-batch axes within each of `num_groups`
  channel groups, then scale and shift per channel."""
  n, c = x.shape[0], x.shape[-1]
  if num_groups <= 0 or c % num_groups:
    raise ValueError(f"Number of groups ({num_groups}) does not divide the number of "
                     f"channels ({c}).")
  out_dtype = dtype or x.dtype
  x32 = x.astype(jnp.float32)
  spatial = tuple(range(1, x.ndim - 1))
  per_group = c // num_groups
  count = per_group
  for a in spatial:
    count *= x.shape[a]
  s1 = jnp.sum(x32, axis=spatial).reshape(n, num_groups, per_group).sum(-1)
  s2 = jnp.sum(jnp.square(x32), axis=spatial).reshape(n, num_groups, per_group).sum(-1)
  mean = s1 / count
  var = jnp.maximum(s2 / count - jnp.square(mean), 0.0)
  rstd = lax.rsqrt(var + epsilon)
  # (N, G) -> (N, C): every channel takes its group's statistics
  k = jnp.repeat(rstd, per_group, axis=1) * scale.astype(jnp.float32)
  b = bias.astype(jnp.float32) - jnp.repeat(mean, per_group, axis=1) * k
  bshape = (n,) + (1,) * len(spatial) + (c,)
  return (x32 * k.reshape(bshape) + b.reshape(bshape)).astype(out_dtype)


def _norm_act(x, scale, bias, num_groups, epsilon, dtype, activation):
  y = group_norm(x, scale, bias, num_groups, epsilon, dtype)
  act = ACTIVATIONS[activation]
  return y if act is None else act(y)


class GroupNorm(nn.Module):
  """`flax.linen.GroupNorm(num_groups, epsilon, dtype)` with the same parameters, then
  `activation` (None or "swish"), recomputed in the backward pass from x alone."""
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  activation: str | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"GroupNorm activation {self.activation!r}: expected one of "
                       f"{', '.join(map(str, ACTIVATIONS))}")
    dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    fn = functools.partial(_norm_act, num_groups=self.num_groups, epsilon=self.epsilon,
                           dtype=dtype, activation=self.activation)
    return jax.checkpoint(fn)(x, scale, bias)
