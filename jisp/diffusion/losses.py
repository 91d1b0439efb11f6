"""Training objectives for epsilon-prediction diffusion."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.diffusion import schedules


def sample_timesteps(rng, batch: int, num_timesteps: int) -> jnp.ndarray:
  """t ~ U{1, ..., T}."""
  return jax.random.randint(rng, (batch,), 1, num_timesteps + 1)


def conditional_eps_loss(eps_fn, schedule: schedules.Schedule, x0, cond, rng):
  """E_{t, eps} || eps - eps_fn(concat[x_t, cond], t) ||^2 (the paper's Eq. 6).

  `eps_fn(net_input, t)` sees the noisy target and the condition concatenated on the
  channel axis. The mean is over every element, so the value does not depend on how the
  batch is split across devices.
  """
  t_rng, n_rng = jax.random.split(rng)
  t = sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
  noise = jax.random.normal(n_rng, x0.shape, x0.dtype)
  x_t = schedules.q_sample(schedule, x0, t, noise)
  eps_hat = eps_fn(jnp.concatenate([x_t, cond], axis=-1), t)
  return jnp.mean(jnp.square(eps_hat - noise))
