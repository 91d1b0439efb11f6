"""Training objectives for conditional diffusion (epsilon, v or x0 parametrisation)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.diffusion import schedules

PREDICTIONS = ("eps", "v", "x0")


def sample_timesteps(rng, batch: int, num_timesteps: int) -> jnp.ndarray:
  """t ~ U{1, ..., T}."""
  return jax.random.randint(rng, (batch,), 1, num_timesteps + 1)


def _coefs(schedule, t, ndim):
  shape = (-1,) + (1,) * (ndim - 1)
  a = jnp.asarray(schedule.sqrt_alpha_bars, jnp.float32)[t].reshape(shape)
  s = jnp.asarray(schedule.sqrt_one_minus_alpha_bars, jnp.float32)[t].reshape(shape)
  return a, s


def draw(rng, shape, num_timesteps: int) -> dict:
  """The objective's random draws for a batch of x0 of `shape`: {"t": (B,), "noise"}."""
  t_rng, n_rng = jax.random.split(rng)
  return {"t": sample_timesteps(t_rng, shape[0], num_timesteps),
          "noise": jax.random.normal(n_rng, shape, jnp.float32)}


def conditional_loss(net_fn, schedule: schedules.Schedule, x0, cond, rng, prediction="eps",
                     draws=None):
  """E_{t, eps} || target - net_fn(concat[x_t, cond], t) ||^2.

  prediction="eps": target eps (the DDPM-for-ISP paper's Eq. 6). prediction="v": target
  v = sqrt(abar) eps - sqrt(1-abar) x0 (Salimans & Ho 2022), which keeps the x0 implied by
  the network accurate at large t, where eps-prediction amplifies its error by
  1/sqrt(abar_t). prediction="x0": target x0 itself, so a network that outputs zero
  predicts x0 = 0 at every t (for a run that diffuses a residual over an estimate, that is
  the estimate) and an undertrained one still regresses E[x0 | condition] at large t.
  The mean is over every element, so the value does not depend on how the
  batch is split across devices. draws: `draw(rng, x0.shape, T)` made beforehand (rows of
  a larger batch's draws when the batch is a micro-batch); drawn from rng when None.
  """
  d = draw(rng, x0.shape, schedule.num_timesteps) if draws is None else draws
  t, noise = d["t"], d["noise"].astype(x0.dtype)
  x_t = schedules.q_sample(schedule, x0, t, noise)
  out = net_fn(jnp.concatenate([x_t, cond], axis=-1), t)
  if prediction == "eps":
    target = noise
  elif prediction == "v":
    a, s = _coefs(schedule, t, x0.ndim)
    target = a * noise - s * x0
  elif prediction == "x0":
    target = x0
  else:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
  return jnp.mean(jnp.square(out - target))


def conditional_eps_loss(eps_fn, schedule, x0, cond, rng, draws=None):
  return conditional_loss(eps_fn, schedule, x0, cond, rng, "eps", draws)


def as_eps_fn(net_fn, schedule, prediction: str, alpha_bar_fn):
  """An eps(x_t, t) view of a network trained with `prediction`, for the samplers.

  alpha_bar_fn(t) gives abar at (possibly fractional) t, as the samplers interpolate it.
  v = a eps - s x0 and x_t = a x0 + s eps give eps = s x_t + a v; an x0-prediction gives
  eps = (x_t - a x0) / s, which the samplers turn back into exactly that x0.
  """
  if prediction == "eps":
    return net_fn
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")

  def eps_fn(x, t):
    ab = alpha_bar_fn(t.astype(jnp.float32))
    shape = (-1,) + (1,) * (x.ndim - 1)
    a = jnp.sqrt(ab).reshape(shape)
    s = jnp.sqrt(1.0 - ab).reshape(shape)
    if prediction == "v":
      return s * x + a * net_fn(x, t)
    return (x - a * net_fn(x, t)) / s
  return eps_fn
