"""A small regression net trained by L1: RAW -> sRGB or sRGB -> RAW, direction in config.

Its two jobs: DiffRAW's colour-extraction network G (raw2rgb: the c = x = G(w) that DTDM
starts from at test time, an ISPNet-like model in the paper) and the cheap RAW estimator of
sRGB -> RAW DTDM (rgb2raw). It is also a plain baseline. Batches hold "raw" and "rgb" in
[0, 1]; the net works in [0, 1] and `predict` clips to that range.

`prior.mode` (jisp.isp.prior) makes the target camera an input: UPI's estimate with the
camera's own matrix and white balance (the inverse for rgb2raw, the forward for raw2rgb)
goes in as extra channels ("input": net(concat[source, prior])), is the base the net's
output is added to ("residual": prior + net(source); the net's own identity skip,
model.residual, is then off, so an all-zero net is exactly UPI), or both. Such runs take
each patch's camera features from the batch in training and from `predict`'s camera
(the test image's, `--like`'s, or the training camera) at inference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.core import metrics
from jisp.core.errors import ConfigError
from jisp.isp import prior as prior_lib
from jisp.models import color_net
from jisp.tasks.base import CameraPriorTask, IOSpec

DIRECTIONS = {"raw2rgb": ("raw", "rgb"), "rgb2raw": ("rgb", "raw")}


class RegressionTask(CameraPriorTask):
  name = "regression"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    direction = config.regression.direction
    if direction not in DIRECTIONS:
      raise ConfigError(f"bad value for config key 'regression.direction': {direction!r} "
                        f"(expected one of {sorted(DIRECTIONS)})")
    self.direction = direction
    self.src, self.dst = DIRECTIONS[direction]
    self.prior = prior_lib.mode_of(config)
    self.protocol = prior_lib.check_protocol(config, self.prior)
    self.prior_tone = prior_lib.tone_of(config)
    prior_lib.refuse_zero_init(config, self.name)
    self.model = color_net.from_config(config.model)
    if prior_lib.is_residual(self.prior) and hasattr(self.model, "residual"):
      self.model = self.model.clone(residual=False)  # the prior is the identity now
    self.patch = config.data.patch_size
    self.default_features = prior_lib.features(
        prior_lib.default_profile(config, self.inputs.camera))

  @property
  def io(self):
    cam = self.prior != "none"
    return IOSpec(source=self.src, target=self.dst, in_channels=3, out_channels=3,
                  patch=self.patch, direction=self.direction,
                  conditions=(self.src, "camera") if cam else (self.src,), camera=cam)

  def batch_spec(self, batch_size):
    p = self.patch
    spec = {k: jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32) for k in ("rgb", "raw")}
    if self.prior != "none":
      spec.update(prior_lib.feature_spec(batch_size))
    return spec

  def init_params(self, rng):
    c = 6 if prior_lib.takes_input(self.prior) else 3
    x = jnp.zeros((1, self.patch, self.patch, c), jnp.float32)
    return self.model.init(rng, x)["params"]

  def camera_of(self, camera):
    return self.default_features if camera is None else camera

  def estimate_prior(self, inputs, camera=None):
    """UPI with the camera's metadata on inputs (B, H, W, 3); camera: features with a
    batch axis, or None for the run's default camera."""
    return prior_lib.estimate(self.direction, inputs, self.camera_of(camera), self.protocol,
                              self.prior_tone)

  def apply(self, params, inputs, camera=None):
    """Unclipped output for inputs (B, H, W, 3) in [0, 1] (camera: see estimate_prior)."""
    x = jnp.asarray(inputs, jnp.float32)
    if self.prior == "none":
      return self.model.apply({"params": params}, x)
    base = self.estimate_prior(x, camera)
    net_in = jnp.concatenate([x, base], -1) if prior_lib.takes_input(self.prior) else x
    out = self.model.apply({"params": params}, net_in)
    return base + out if prior_lib.is_residual(self.prior) else out

  def draws(self, rng, batch):
    del rng, batch
    return {}

  def loss(self, params, batch, rng, train=True, draws=None):
    del rng, train, draws
    out = self.apply(params, batch[self.src], prior_lib.from_batch(batch))
    return jnp.mean(jnp.abs(out - batch[self.dst])), {}

  def eval_metrics(self, params, batch, rng):
    out = jnp.clip(self.apply(params, batch[self.src], prior_lib.from_batch(batch)), 0.0, 1.0)
    return {"loss": jnp.mean(jnp.abs(out - batch[self.dst])),
            "psnr": metrics.batch_psnr(out, batch[self.dst])}

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """The mapped image in [0, 1] (deterministic: rng and noise are unused)."""
    del rng, options, noise
    return jnp.clip(self.apply(params, inputs, camera), 0.0, 1.0)

  def default_camera(self):
    return prior_lib.default_profile(self.config) if self.prior != "none" else None

  def network(self, params):
    x = jax.ShapeDtypeStruct((1, self.patch, self.patch, 3), jnp.float32)
    return (lambda prm, xx: self.apply(prm, xx)), (params, x)
