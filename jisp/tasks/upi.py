"""UPI (Brooks et al. 2019) as a task: sRGB -> RAW by unprocessing, with no network.

The baseline the learned systems are measured against, usable wherever a trained run is
(`jisp eval`, `reconstruct`, `compare`, `bench`). Its one parameter is a 3x3 sRGB -> camera
matrix, used when the camera is not known: it starts as UPI's average camera, and
`jisp train` on a prepared folder fits it to the training split (least squares by the one
train loop; the fitted matrix absorbs the white balance). When the target camera is known
(its features reach `predict`: the test file's own metadata in eval, `--like` in
reconstruct), its own colour matrix and white balance are used instead — Brooks et al.'s
unprocessing with the camera's metadata.

config.upi.tone: how the render's tone is undone (jisp.isp.tone.TONE_MODELS): "upi", Brooks
et al.'s smoothstep over gamma 2.2 (the paper), or "render", the pair protocol's own render
curve (`--method upi_render`).

config.upi.rgb_gain: Brooks et al.'s brightness gain (the digital gain the ISP is assumed
to have applied, unprocessing divides by it); 1 = none, jisp's default (their training
draws 1 / N(0.8, 0.1), mean 1.25).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import metrics
from jisp.core.camera import PROTOCOL_GAMMA
from jisp.core.errors import ConfigError
from jisp.isp import prior as prior_lib
from jisp.isp import unprocess, upi
from jisp.tasks.base import IOSpec, Task


class UPITask(Task):
  name = "upi"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    self.protocol = config.data.get("protocol", "invisp")
    if self.protocol not in PROTOCOL_GAMMA:
      raise ConfigError(f"bad value for config key 'data.protocol': {self.protocol!r} (UPI "
                        f"maps into {', '.join(PROTOCOL_GAMMA)})")
    self.rgb_gain = float(config.upi.rgb_gain)
    if not self.rgb_gain > 0:
      raise ConfigError(f"bad value for config key 'upi.rgb_gain': {self.rgb_gain} (must be > 0)")
    self.tone = prior_lib.check_tone(config.upi.get("tone", "upi"), "upi.tone")
    self.patch = int(config.data.patch_size)

  @property
  def io(self):
    return IOSpec(source="rgb", target="raw", in_channels=3, out_channels=3,
                  patch=self.patch, direction="rgb2raw", conditions=("rgb", "camera"),
                  camera=True)

  def batch_spec(self, batch_size):
    p = self.patch
    return {k: jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32) for k in ("rgb", "raw")}

  def init_params(self, rng):
    del rng
    return {"rgb2cam": jnp.asarray(np.linalg.inv(upi.mean_cam2rgb()), jnp.float32)}

  def _apply(self, rgb2cam, wb, inputs):
    """UPI's inverse of one image (H, W, 3) with one camera's matrix and gains."""
    cam = unprocess.CameraParams(rgb2cam=rgb2cam, cam2rgb=jnp.linalg.inv(rgb2cam),
                                 wb_gains=wb, shot_noise=jnp.zeros(()),
                                 read_noise=jnp.zeros(()))
    return upi.rgb_to_raw(inputs, cam, self.protocol, self.rgb_gain, self.tone)

  def _camera(self, params, batch, camera):
    if camera is not None:
      return camera["rgb2cam"], camera["wb"]
    m = jnp.broadcast_to(params["rgb2cam"], (batch, 3, 3))
    return m, jnp.ones((batch, 3), jnp.float32)

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    del rng, options, noise
    x = jnp.asarray(inputs, jnp.float32)
    m, wb = self._camera(params, x.shape[0], camera)
    return jnp.clip(jax.vmap(self._apply)(m, wb, x), 0.0, 1.0)

  def draws(self, rng, batch):
    del rng, batch
    return {}

  def loss(self, params, batch, rng, train=True, draws=None):
    del rng, train, draws
    out = jax.vmap(self._apply)(*self._camera(params, batch["rgb"].shape[0], None),
                                batch["rgb"])
    return jnp.mean(jnp.square(out - batch["raw"])), {}

  def eval_metrics(self, params, batch, rng):
    out = self.predict(params, batch["rgb"], rng, None)
    return {"loss": self.loss(params, batch, rng)[0],
            "psnr": metrics.batch_psnr(out, batch["raw"])}

  def default_camera(self):
    return upi.DEFAULT_PROFILE

  def network(self, params):
    x = jax.ShapeDtypeStruct((1, self.patch, self.patch, 3), jnp.float32)
    return (lambda prm, xx: self.predict(prm, xx, None, None)), (params, x)
