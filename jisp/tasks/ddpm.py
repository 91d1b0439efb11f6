"""Conditional DDPM for sRGB -> RAW (epsilon prediction, RGB concatenated to x_t)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.diffusion import losses, schedules
from jisp.models import unet


def to_model_range(x):
  """Data lives in [0, 1]; the diffusion runs in [-1, 1] like the paper's DDPM."""
  return x * 2.0 - 1.0


class DDPMTask:
  name = "ddpm"

  def __init__(self, config):
    self.config = config
    self.model = unet.from_config(config.model)
    self.schedule = schedules.make_schedule(config.diffusion)
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
    loss = losses.conditional_eps_loss(self.eps_fn(params, train, d_rng), self.schedule,
                                       x0, cond, l_rng)
    return loss, {}

  def eval_metrics(self, params, batch, rng):
    loss, _ = self.loss(params, batch, rng, train=False)
    return {"loss": loss}
