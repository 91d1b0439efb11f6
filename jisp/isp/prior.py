"""The camera prior: UPI's estimate with the target camera's own metadata, per patch.

A network that maps sRGB to RAW cannot know the target camera's colour from the photo; the
camera's metadata (its colour matrix and white balance) says it. The prior is
Brooks et al.'s unprocessing with those (jisp.isp.upi.rgb_to_raw, in the pair protocol's
RAW space), computed inside the task for each patch from the batch's camera features, so
the network only has to learn what metadata cannot say: the tone curve, the JPEG, clipped
highlights. `prior.mode` (config):

  none      the plain network (the papers' setting)
  input     the prior as extra input channels
  residual  the output is prior + network: an all-zero network is exactly UPI
  both      both of the above

`prior.tone` (config, default "upi"): how the estimate undoes the render's tone
(jisp.isp.tone.TONE_MODELS): "upi" is Brooks et al.'s model (smoothstep over gamma 2.2),
"render" the pair protocol's own render curve (LibRaw's BT.709-shaped gamma, no tone map),
which is what the sRGB of every pair jisp prepares went through. The camera's colour still
comes only from its metadata.

Camera features are what jisp.core.camera.camera_features gives, with a leading batch axis:
"rgb2cam" (B, 3, 3) linear sRGB -> camera RGB (rows sum to 1) and "wb" (B, 3) the
white-balance gains with G = 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core.camera import (PROTOCOL_GAMMA, SYNTHETIC_CAM2RGB, XYZ_TO_SRGB, CameraProfile,
                              camera_features)
from jisp.core.errors import ConfigError
from jisp.isp import tone, unprocess, upi

MODES = ("none", "input", "residual", "both")
FEATURE_KEYS = ("rgb2cam", "wb")

# jisp.data.synthetic's camera: its sRGB is cam @ SYNTHETIC_CAM2RGB^T with the camera RGB
# already white-balanced, so its gains are 1.
_SYNTH_RGB2CAM = np.linalg.inv(SYNTHETIC_CAM2RGB.astype(np.float64))
SYNTHETIC_PROFILE = CameraProfile(
    wb=(1.0, 1.0, 1.0), rgb_cam=tuple(map(tuple, SYNTHETIC_CAM2RGB.astype(float).tolist())),
    color_matrix=tuple(map(tuple, (_SYNTH_RGB2CAM @ XYZ_TO_SRGB).tolist())),
    camera="jisp synthetic camera")


def _key(config, name: str, default):
  """config.prior.NAME, `default` when the config has no prior block or no such key
  (configs and runs saved before it)."""
  block = config.get("prior") if hasattr(config, "get") else None
  return default if block is None else block.get(name, default)


def _bad(key: str, value, expected: str) -> ConfigError:
  return ConfigError(f"bad value for config key '{key}': {value!r} (expected {expected})")


def mode_of(config) -> str:
  """config.prior.mode ("none" when absent)."""
  mode = _key(config, "mode", "none")
  if mode not in MODES:
    raise _bad("prior.mode", mode, f"one of {', '.join(MODES)}")
  return mode


def check_tone(model: str, key: str) -> str:
  """A tone model read from config key `key`; ConfigError naming the key if unknown."""
  if model not in tone.TONE_MODELS:
    raise _bad(key, model, f"one of {', '.join(tone.TONE_MODELS)}")
  return model


def tone_of(config) -> str:
  """config.prior.tone ("upi" when absent)."""
  return check_tone(_key(config, "tone", "upi"), "prior.tone")


def zero_init_of(config) -> bool:
  """config.prior.zero_init (False when absent): a residual network's output layer starts
  at zero, so the untrained network returns the prior exactly."""
  value = _key(config, "zero_init", False)
  if not isinstance(value, bool):
    raise _bad("prior.zero_init", value, "true or false")
  return value


def refuse_zero_init(config, task: str) -> None:
  """ConfigError when prior.zero_init is set for a task that has no zero-able head."""
  if zero_init_of(config):
    raise ConfigError(f"config key 'prior.zero_init'=true: only SSDNet's residual variant "
                      f"(prior.mode=residual) starts its head at zero, not {task}")


def takes_input(mode: str) -> bool:
  return mode in ("input", "both")


def is_residual(mode: str) -> bool:
  return mode in ("residual", "both")


def check_protocol(config, mode: str) -> str:
  """The protocol the prior maps into; ConfigError for protocols without a 3-channel RAW."""
  protocol = config.data.get("protocol", "invisp")
  if mode != "none" and protocol not in PROTOCOL_GAMMA:
    raise ConfigError(f"config key 'prior.mode'={mode!r} needs a 3-channel RAW protocol "
                      f"({' / '.join(PROTOCOL_GAMMA)}), but data.protocol is {protocol!r}")
  return protocol


def features(profile: CameraProfile) -> dict[str, np.ndarray]:
  """One camera's features (no batch axis)."""
  return camera_features(profile)


def batched(camera: dict, batch: int) -> dict[str, jax.Array]:
  """Features with a leading batch axis: per-patch arrays pass through, one camera's
  (3, 3) / (3,) arrays are broadcast to every patch."""
  out = {}
  for k, nd in (("rgb2cam", 2), ("wb", 1)):
    v = jnp.asarray(camera[k], jnp.float32)
    out[k] = v if v.ndim == nd + 1 else jnp.broadcast_to(v, (batch,) + v.shape)
  return out


def from_batch(batch) -> dict | None:
  """The batch's camera features, or None when it carries none."""
  if all(k in batch for k in FEATURE_KEYS):
    return {k: batch[k] for k in FEATURE_KEYS}
  return None


def _params(rgb2cam, wb) -> unprocess.CameraParams:
  return unprocess.CameraParams(rgb2cam=rgb2cam, cam2rgb=jnp.linalg.inv(rgb2cam),
                                wb_gains=wb, shot_noise=jnp.zeros(()),
                                read_noise=jnp.zeros(()))


def rgb_to_raw(rgb, camera: dict, protocol: str = "invisp", rgb_gain: float = 1.0,
               tone_model: str = "upi"):
  """UPI's RAW estimate (B, H, W, 3) in [0, 1] of sRGB patches (B, H, W, 3), each with its
  own camera (features with a batch axis, see `batched`)."""
  x = jnp.asarray(rgb, jnp.float32)
  cam = batched(camera, x.shape[0])
  one = lambda img, m, wb: upi.rgb_to_raw(img, _params(m, wb), protocol, rgb_gain,
                                          tone_model)
  return jnp.clip(jax.vmap(one)(x, cam["rgb2cam"], cam["wb"]), 0.0, 1.0)


def raw_to_rgb(raw, camera: dict, protocol: str = "invisp", tone_model: str = "upi"):
  """UPI's forward (process): the sRGB estimate of protocol-space RAW patches."""
  x = jnp.asarray(raw, jnp.float32)
  cam = batched(camera, x.shape[0])
  one = lambda img, m, wb: upi.raw_to_rgb(img, _params(m, wb), protocol, tone_model)
  return jnp.clip(jax.vmap(one)(x, cam["rgb2cam"], cam["wb"]), 0.0, 1.0)


def estimate(direction: str, inputs, camera: dict, protocol: str, tone_model: str = "upi"):
  """The prior of a task mapping `direction` ("rgb2raw" / "raw2rgb") for its inputs."""
  if direction == "rgb2raw":
    return rgb_to_raw(inputs, camera, protocol, tone_model=tone_model)
  return raw_to_rgb(inputs, camera, protocol, tone_model)


def feature_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """What a batch that carries camera features adds (Task.batch_spec)."""
  return {"rgb2cam": jax.ShapeDtypeStruct((batch_size, 3, 3), jnp.float32),
          "wb": jax.ShapeDtypeStruct((batch_size, 3), jnp.float32)}


def default_profile(config, camera: CameraProfile | None = None) -> CameraProfile:
  """The camera a task assumes when predict is given none: the training data's (`camera`,
  resolved by the caller from the manifest), else the synthetic source's own camera, else
  UPI's average camera."""
  if camera is not None:
    return camera
  data = config.data
  if data.get("source", "synthetic") == "synthetic" and not data.get("dir"):
    return SYNTHETIC_PROFILE
  return upi.DEFAULT_PROFILE
