"""Conditional DDPM for sRGB -> RAW (epsilon prediction, RGB concatenated to x_t)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.diffusion import losses, samplers, schedules
from jisp.models import microbatch, unet


def to_model_range(x):
  """Data lives in [0, 1]; the diffusion runs in [-1, 1] like the paper's DDPM."""
  return x * 2.0 - 1.0


def from_model_range(x):
  return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)


def sampler_options(sampler: str, steps, num_timesteps: int, **kw) -> dict:
  """`samplers.sample` keyword arguments for (sampler, steps) as jisp's tools mean them.

  steps = network evaluations of the solver: "ddpm" always runs all T steps (steps must be
  None or T); "ddim" takes `steps` grid points; the DPM-Solvers take `steps` NFE and, unless
  told otherwise, one more evaluation that returns the x0-prediction at t=1: they stop at
  t=1, where x still holds noise of std sqrt(beta_1) (0.02 of the [0, 1] range here, a
  ~34 dB ceiling on RAW PSNR), which the extra evaluation removes.
  """
  if sampler not in samplers.NAMES:
    raise ValueError(f"unknown sampler {sampler!r} (expected one of {samplers.NAMES})")
  kw = dict(kw)
  if sampler == "ddpm":
    if steps is not None and int(steps) != num_timesteps:
      raise ValueError(f"sampler 'ddpm' runs all T={num_timesteps} steps (got steps={steps}); "
                       "use ddim or dpm_solver for fewer")
    return kw
  if steps is None:
    raise ValueError(f"sampler {sampler!r} needs a number of steps")
  kw["num_steps"] = int(steps)
  if sampler in ("dpm_solver", "dpm_solver_pp"):
    kw.setdefault("denoise_to_zero", True)
  return kw


class DDPMTask:
  name = "ddpm"

  def __init__(self, config):
    self.config = config
    self.model = unet.from_config(config.model)
    self.schedule = schedules.make_schedule(config.diffusion)
    self.prediction = config.diffusion.get("prediction", "eps")
    if self.prediction not in losses.PREDICTIONS:
      from jisp.config_utils import ConfigError
      raise ConfigError(f"bad value for config key 'diffusion.prediction': {self.prediction!r} "
                        f"(expected one of {', '.join(losses.PREDICTIONS)})")
    self.patch = config.data.patch_size
    self.raw_channels = config.model.out_channels
    self.cond_channels = config.model.in_channels - config.model.out_channels

  def batch_spec(self, batch_size):
    p = self.patch
    return {
        "rgb": jax.ShapeDtypeStruct((batch_size, p, p, self.cond_channels), jnp.float32),
        "raw": jax.ShapeDtypeStruct((batch_size, p, p, self.raw_channels), jnp.float32),
    }

  def init_params(self, rng):
    p = self.patch
    x = jnp.zeros((1, p, p, self.raw_channels + self.cond_channels), jnp.float32)
    return self.model.init(rng, x, jnp.ones((1,), jnp.float32))["params"]

  def eps_fn(self, params, train=False, rng=None):
    def f(net_in, t):
      rngs = {"dropout": rng} if (train and rng is not None) else None
      return self.model.apply({"params": params}, net_in, t, train=train, rngs=rngs)
    return f

  def loss(self, params, batch, rng, train=True):
    d_rng, l_rng = jax.random.split(rng)
    x0 = to_model_range(batch["raw"])
    cond = to_model_range(batch["rgb"])
    loss = losses.conditional_loss(self.eps_fn(params, train, d_rng), self.schedule,
                                   x0, cond, l_rng, self.prediction)
    return loss, {}

  def eval_metrics(self, params, batch, rng):
    loss, _ = self.loss(params, batch, rng, train=False)
    return {"loss": loss}

  def predict(self, params, rgb_patches, rng, *, sampler, steps, x_init=None, clip_x0=True,
              net_chunk=None, **kw):
    """RAW patches in [0, 1] for sRGB patches (B, P, P, 3) in [0, 1], by conditional sampling.

    x_init: the starting noise (B, P, P, raw_channels) in the model's [-1, 1] space; drawn
    from `rng` when None (tiled reconstruction passes its own to share noise per pixel).
    `rng` also drives the noise of stochastic samplers. clip_x0 keeps the x0 implied by
    each network call inside the data range (see samplers.clip_denoised). net_chunk: evaluate
    the network that many patches at a time (models.microbatch; None = whole batch). Pure
    and jit-able: sampler, steps and net_chunk are static. Extra keywords go to the sampler
    (see `sampler_options`).
    """
    cond = to_model_range(jnp.asarray(rgb_patches, jnp.float32))
    init_rng, sample_rng = jax.random.split(rng)
    if x_init is None:
      x_init = jax.random.normal(init_rng, cond.shape[:-1] + (self.raw_channels,), jnp.float32)
    net = microbatch.microbatched(self.eps_fn(params), net_chunk)
    # The condition is closed over, so every sampler sees a plain eps(x_t, t).
    out = lambda x, t: net(jnp.concatenate([x, cond], axis=-1), t)
    eps = losses.as_eps_fn(out, self.schedule, self.prediction,
                           lambda t: samplers.continuous_alpha_bar(self.schedule, t))
    if clip_x0:
      eps = samplers.clip_denoised(eps, self.schedule)
    opts = sampler_options(sampler, steps, self.schedule.num_timesteps, **kw)
    x0 = samplers.sample(sampler, eps, self.schedule, x_init, sample_rng, **opts)
    return from_model_range(x0)

  def nfe(self, *, sampler, steps, **kw) -> int:
    """Network evaluations one `predict` call makes."""
    opts = sampler_options(sampler, steps, self.schedule.num_timesteps, **kw)
    return samplers.nfe(sampler, num_timesteps=self.schedule.num_timesteps, **opts)
