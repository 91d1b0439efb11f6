"""A small regression net trained by L1: RAW -> sRGB or sRGB -> RAW, direction in config.

Its two jobs: DiffRAW's colour-extraction network G (raw2rgb: the c = x = G(w) that DTDM
starts from at test time, an ISPNet-like model in the paper) and the cheap RAW estimator of
sRGB -> RAW DTDM (rgb2raw). It is also a plain baseline. Batches hold "raw" and "rgb" in
[0, 1]; the net works in [0, 1] and `predict` clips to that range.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.core import metrics
from jisp.core.errors import ConfigError
from jisp.models import color_net
from jisp.tasks.base import IOSpec, Task

DIRECTIONS = {"raw2rgb": ("raw", "rgb"), "rgb2raw": ("rgb", "raw")}


class RegressionTask(Task):
  name = "regression"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    direction = config.regression.direction
    if direction not in DIRECTIONS:
      raise ConfigError(f"bad value for config key 'regression.direction': {direction!r} "
                        f"(expected one of {sorted(DIRECTIONS)})")
    self.direction = direction
    self.src, self.dst = DIRECTIONS[direction]
    self.model = color_net.from_config(config.model)
    self.patch = config.data.patch_size

  @property
  def io(self):
    return IOSpec(source=self.src, target=self.dst, in_channels=3, out_channels=3,
                  patch=self.patch, direction=self.direction, conditions=(self.src,))

  def batch_spec(self, batch_size):
    p = self.patch
    return {k: jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32) for k in ("rgb", "raw")}

  def init_params(self, rng):
    x = jnp.zeros((1, self.patch, self.patch, 3), jnp.float32)
    return self.model.init(rng, x)["params"]

  def apply(self, params, inputs):
    """Unclipped output for inputs (B, H, W, 3) in [0, 1]."""
    return self.model.apply({"params": params}, inputs)

  def loss(self, params, batch, rng, train=True):
    del rng, train
    out = self.apply(params, batch[self.src])
    return jnp.mean(jnp.abs(out - batch[self.dst])), {}

  def eval_metrics(self, params, batch, rng):
    out = jnp.clip(self.apply(params, batch[self.src]), 0.0, 1.0)
    return {"loss": jnp.mean(jnp.abs(out - batch[self.dst])),
            "psnr": metrics.batch_psnr(out, batch[self.dst])}

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """The mapped image in [0, 1] (deterministic: rng and noise are unused)."""
    del rng, options, noise
    return jnp.clip(self.apply(params, jnp.asarray(inputs, jnp.float32)), 0.0, 1.0)

  def network(self, params):
    x = jax.ShapeDtypeStruct((1, self.patch, self.patch, 3), jnp.float32)
    return self.apply, (params, x)
