"""A small regression net trained by L1: RAW -> sRGB or sRGB -> RAW, direction in config.

Its two jobs: DiffRAW's colour-extraction network G (raw2rgb: the c = x = G(w) that DTDM
starts from at test time, an ISPNet-like model in the paper) and the cheap RAW estimator of
sRGB -> RAW DTDM (rgb2raw). It is also a plain baseline. Batches hold "raw" and "rgb" in
[0, 1]; the net works in [0, 1] and `predict` clips to that range.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.config_utils import ConfigError
from jisp.models import color_net

DIRECTIONS = {"raw2rgb": ("raw", "rgb"), "rgb2raw": ("rgb", "raw")}


def psnr(a, b, axis=None):
  """PSNR in dB of [0, 1] images (mean over `axis` before the log)."""
  mse = jnp.mean(jnp.square(a - b), axis=axis)
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))


class RegressionTask:
  name = "regression"

  def __init__(self, config):
    self.config = config
    direction = config.regression.direction
    if direction not in DIRECTIONS:
      raise ConfigError(f"bad value for config key 'regression.direction': {direction!r} "
                        f"(expected one of {sorted(DIRECTIONS)})")
    self.direction = direction
    self.src, self.dst = DIRECTIONS[direction]
    self.model = color_net.from_config(config.model)
    self.patch = config.data.patch_size
    self._predict_fn = None

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
            "psnr": jnp.mean(psnr(out, batch[self.dst], axis=(1, 2, 3)))}

  def predict(self, params, inputs, rng=None, **kw):
    """The mapped image in [0, 1]; `rng` and sampler keywords (steps, ...) are ignored, so
    the tiled reconstruct / eval tools can call every task alike."""
    del rng, kw
    if self._predict_fn is None:
      self._predict_fn = jax.jit(lambda p, x: jnp.clip(self.apply(p, x), 0.0, 1.0))
    return self._predict_fn(params, jnp.asarray(inputs, jnp.float32))
