"""Exact diffusion answers for Gaussian data, to test samplers against.

Data x0 ~ N(mu, s^2) independently per dimension (mu, s broadcast against one sample's
shape). Then x_t ~ N(sqrt(ab_t) mu, ab_t s^2 + 1 - ab_t), the optimal eps-predictor is
    eps*(x, t) = sqrt(1 - ab_t) (x - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t),
and the probability-flow ODE keeps the standardized value (x - mean_t) / std_t constant,
so its exact map between any two times is affine. ab(t) for non-integer t is the samplers'
own continuous interpolation, so the oracle is consistent with what DPM-Solver integrates.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jisp.diffusion import samplers
from jisp.diffusion.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class GaussianOracle:
  schedule: Schedule
  mu: np.ndarray  # shape of one sample (or broadcastable to it)
  s: np.ndarray

  def moments(self, t):
    """(mean, std) of x_t for a scalar time t (numpy; t may be non-integer)."""
    ab = float(samplers.continuous_alpha_bar(self.schedule, float(t)))
    return np.sqrt(ab) * self.mu, np.sqrt(ab * self.s ** 2 + 1 - ab)

  def eps(self, x, t):
    """eps*(x, t) with x (B, ...) and t (B,) float; jnp, jit-safe."""
    ab = samplers.continuous_alpha_bar(self.schedule, jnp.asarray(t, jnp.float32))
    ab = ab.reshape((-1,) + (1,) * (x.ndim - 1))
    mu = jnp.asarray(self.mu, x.dtype)
    s2 = jnp.asarray(self.s, x.dtype) ** 2
    return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * s2 + 1 - ab)

  def sample_marginal(self, key, t, batch: int, shape):
    """Exact draw of `batch` samples x_t of one-sample shape `shape` (float32 jnp)."""
    mean, std = self.moments(t)
    z = jax.random.normal(key, (batch,) + tuple(shape), jnp.float32)
    return jnp.asarray(mean, jnp.float32) + jnp.asarray(std, jnp.float32) * z

  def ode_map(self, x, t_from, t_to):
    """Exact probability-flow ODE solution: x at t_from -> x at t_to (numpy float64)."""
    m0, s0 = self.moments(t_from)
    m1, s1 = self.moments(t_to)
    return m1 + s1 * (np.asarray(x, np.float64) - m0) / s0
