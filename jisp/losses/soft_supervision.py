"""Soft supervision (Zou & Zhang, AIM 2022): the target as N(x_gt, diag(e_gt^2)) with
e_gt = |mu - x_gt| the network's own current absolute error.

Element-wise over any shape; `mean` is over every element (and so the batch). One loss
element is the code's clipped L1, l(u) = clip(|u|, clip_min, clip_max): errors below one
10-bit code value (1/1024 by default) or above clip_max count as constants with zero
gradient.

  training-resampling (the paper's default, Eq. 3-4):
    x_rp = x_gt + z e_gt, z ~ N(0, I) fresh every step;
    L_B = mean l(mu - x_rp) + alpha mean l(sigma - e_gt); predict mu.
  test-resampling (Eq. 2):
    L_A = mean l(mu - x_gt) + mean l(sigma - e_gt); predict clip(mean_k (mu + sigma z_k)).
  plain: mean l(mu - x_gt) (Table 2's "*").

Gradient through e_gt (the paper is silent): the official code does not stop it, so by
default L_B's main term has d/dmu = sign(d) |1 - sign(d) z| (d = mu - x_gt; never
sign-reversed, expectation 1.16663 sign(d)) and L_A's sigma term also pulls |mu - x_gt|
towards sigma. stop_grad_target=True stops it (then L_B's d/dmu = sign(d - |d| z), whose
expectation is 0.68269 sign(d)). L_B's sigma term always sees e_gt as a constant: in the
code that term (compared with x_gt there, a slip; Eq. 4 says e_gt) carries no gradient to
mu, and alpha is meant to weight the sigma head only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

CLIP_MIN = 2.0 ** -10
CLIP_MAX = 1.0
ALPHA = 1e-3
TEST_SAMPLES = 50


def clipped_l1(u, clip_min: float = CLIP_MIN, clip_max: float = CLIP_MAX):
  """Element-wise clip(|u|, clip_min, clip_max) (zero gradient where clipped)."""
  return jnp.clip(jnp.abs(u), clip_min, clip_max)


def error_map(mu, x_gt, stop_grad: bool = False):
  """e_gt = |mu - x_gt|, optionally without gradient."""
  e = jnp.abs(mu - x_gt)
  return jax.lax.stop_gradient(e) if stop_grad else e


def resample_target(x_gt, e_gt, z):
  """x_rp = x_gt + z e_gt: one draw of the soft target (reparameterised)."""
  return x_gt + z * e_gt


def plain_loss(mu, x_gt, clip_min: float = CLIP_MIN, clip_max: float = CLIP_MAX):
  return jnp.mean(clipped_l1(mu - x_gt, clip_min, clip_max))


def train_resampling_loss(mu, sigma, x_gt, z, alpha: float = ALPHA,
                          clip_min: float = CLIP_MIN, clip_max: float = CLIP_MAX,
                          stop_grad_target: bool = False):
  """(L_B, {"main", "aux"}). sigma None drops the aux term (a sigma-free model)."""
  e_gt = error_map(mu, x_gt, stop_grad_target)
  main = jnp.mean(clipped_l1(mu - resample_target(x_gt, e_gt, z), clip_min, clip_max))
  if sigma is None:
    return main, {"main": main}
  aux = jnp.mean(clipped_l1(sigma - jax.lax.stop_gradient(e_gt), clip_min, clip_max))
  return main + alpha * aux, {"main": main, "aux": aux}


def test_resampling_loss(mu, sigma, x_gt, clip_min: float = CLIP_MIN,
                         clip_max: float = CLIP_MAX, stop_grad_target: bool = False):
  """(L_A, {"main", "aux"}): L1 of mu to x_gt plus L1 of sigma to e_gt (weight 1)."""
  main = plain_loss(mu, x_gt, clip_min, clip_max)
  aux = jnp.mean(clipped_l1(sigma - error_map(mu, x_gt, stop_grad_target), clip_min, clip_max))
  return main + aux, {"main": main, "aux": aux}


def resample_average(mu, sigma, z):
  """clip(mean_k (mu + sigma z_k), 0, 1) over the leading axis of z (N draws): the
  official forward_test, kept as the reference of `resample_mean`."""
  return jnp.clip(jnp.mean(mu[None] + sigma[None] * z, axis=0), 0.0, 1.0)


def resample_mean(mu, sigma, z, n: int = TEST_SAMPLES):
  """One draw with the distribution of resample_average over n draws: the mean of n
  independent mu + sigma z_k is N(mu, sigma^2 / n) per element, so mu + sigma z / sqrt(n)
  with one z ~ N(0, I) (clipped after, as there)."""
  return jnp.clip(mu + sigma * z / math.sqrt(n), 0.0, 1.0)
