"""Discrete-time noise schedules for DDPM-style diffusion.

Conventions (used by every module in jisp.diffusion):
  * timesteps are integers t in {1, ..., T}; index 0 of every array below is t=0,
    i.e. the clean data (alpha_bar[0] = 1, beta[0] = 0). Arrays have length T+1,
    so `alpha_bar[t]` reads naturally.
  * q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).  The DDPM-for-ISP
    paper prints this without the square roots; the square roots are right.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Precomputed schedule arrays (numpy float64, length T+1, index = timestep)."""
  betas: np.ndarray
  kind: str

  @property
  def num_timesteps(self) -> int:
    return len(self.betas) - 1

  @property
  def alphas(self) -> np.ndarray:
    return 1.0 - self.betas

  @property
  def alpha_bars(self) -> np.ndarray:
    return np.cumprod(self.alphas)

  @property
  def sqrt_alpha_bars(self) -> np.ndarray:
    return np.sqrt(self.alpha_bars)

  @property
  def sqrt_one_minus_alpha_bars(self) -> np.ndarray:
    return np.sqrt(1.0 - self.alpha_bars)

  @property
  def posterior_variance(self) -> np.ndarray:
    """beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (0 at t=0)."""
    ab = self.alpha_bars
    out = np.zeros_like(ab)
    out[1:] = (1.0 - ab[:-1]) / (1.0 - ab[1:]) * self.betas[1:]
    return out

  @property
  def log_alpha(self) -> np.ndarray:
    """log of the continuous-time alpha_t = sqrt(abar_t) (DPM-Solver notation)."""
    return 0.5 * np.log(self.alpha_bars)

  @property
  def lambdas(self) -> np.ndarray:
    """Half log-SNR: lambda_t = log(alpha_t / sigma_t)."""
    ab = self.alpha_bars
    with np.errstate(divide="ignore"):
      return 0.5 * (np.log(ab) - np.log1p(-ab))


def linear_ldm(num_timesteps: int = 1000, beta_start: float = 0.0015,
               beta_end: float = 0.0195) -> Schedule:
  """LDM's schedule: linear in sqrt(beta) (diffusers' "scaled_linear").

  The DDPM-for-ISP paper says "linear from 0.0015 to 0.0195 following LDM". LDM's
  code spaces sqrt(beta) linearly; diffusers' "linear" spaces beta linearly. Both
  end points agree; `kind="linear"` below gives the latter (what peer_torch.py
  uses), this one the former.
  """
  b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
  return Schedule(np.concatenate([[0.0], b]), "linear_ldm")


def linear(num_timesteps: int = 1000, beta_start: float = 0.0015,
           beta_end: float = 0.0195) -> Schedule:
  """beta linear in t (original DDPM form with the paper's end points by default)."""
  b = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  return Schedule(np.concatenate([[0.0], b]), "linear")


def ddpm_original(num_timesteps: int = 1000) -> Schedule:
  """Ho et al. 2020: beta linear from 1e-4 to 0.02."""
  s = linear(num_timesteps, 1e-4, 0.02)
  return Schedule(s.betas, "ddpm")


def make_schedule(cfg) -> Schedule:
  """Build from a config block with `kind`, `num_timesteps`, `beta_start`, `beta_end`."""
  kind = cfg.kind
  if kind == "linear":
    return linear(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
  if kind == "linear_ldm":
    return linear_ldm(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
  if kind == "ddpm":
    return ddpm_original(cfg.num_timesteps)
  raise ValueError(f"diffusion.schedule.kind: unknown schedule {kind!r} "
                   "(expected 'linear', 'linear_ldm' or 'ddpm')")


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray,
             noise: jnp.ndarray) -> jnp.ndarray:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with t an int array of shape (B,)."""
  a = jnp.asarray(schedule.sqrt_alpha_bars, jnp.float32)[t]
  s = jnp.asarray(schedule.sqrt_one_minus_alpha_bars, jnp.float32)[t]
  shape = (-1,) + (1,) * (x0.ndim - 1)
  return a.reshape(shape) * x0 + s.reshape(shape) * noise
