"""UPI (Brooks et al.) as a cheap sRGB <-> RAW estimator for a known camera, no learning.

The inverse maps an sRGB image into a pair protocol's RAW space (jisp.data.pairs): UPI's
`unprocess` with the camera's colour matrix and white balance gives linear camera RGB;
the protocol then white-balances it with the target gains (wb / max(wb), never above 1, so
nothing is clipped) and (invisp) gamma-compresses it, exactly as the RAW targets are made.
The forward is UPI's `process` from that space back to sRGB.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jisp.core.camera import PROTOCOL_GAMMA, CameraProfile
from jisp.isp import tone, unprocess


def _target_gains(cam):
  """jisp.core.camera.target_gains in jnp: the gains the protocol's RAW target carries."""
  return cam.wb_gains / jnp.max(cam.wb_gains)


def mean_xyz2cam() -> np.ndarray:
  """XYZ -> camera of UPI's average camera (the mean of its four real cameras)."""
  return np.mean(unprocess.XYZ2CAMS, axis=0)


def mean_cam2rgb() -> np.ndarray:
  """camera -> linear sRGB of UPI's average camera (mean of its four XYZ->camera matrices)."""
  rgb2cam = mean_xyz2cam() @ unprocess.RGB2XYZ
  rgb2cam = rgb2cam / rgb2cam.sum(axis=1, keepdims=True)
  return np.linalg.inv(rgb2cam)


def camera_params(cam2rgb, wb=(1.0, 1.0, 1.0)) -> unprocess.CameraParams:
  """A noise-free UPI camera from its camera -> sRGB matrix and white-balance gains."""
  cam2rgb = np.asarray(cam2rgb, np.float64).reshape(3, 3)
  return unprocess.CameraParams(
      rgb2cam=jnp.asarray(np.linalg.inv(cam2rgb), jnp.float32),
      cam2rgb=jnp.asarray(cam2rgb, jnp.float32),
      wb_gains=jnp.asarray(np.asarray(wb, np.float64).reshape(3), jnp.float32),
      shot_noise=jnp.zeros(()), read_noise=jnp.zeros(()))


def _check(protocol):
  if protocol not in PROTOCOL_GAMMA:
    raise ValueError(f"UPI maps into the {'/'.join(PROTOCOL_GAMMA)} protocols, not {protocol!r}")
  return PROTOCOL_GAMMA[protocol]


def rgb_to_raw(rgb, cam: unprocess.CameraParams, protocol: str = "invisp",
               rgb_gain: float = 1.0, tone_model: str = "upi"):
  """sRGB (..., 3) in [0, 1] -> the protocol's RAW (white-balanced camera RGB, gamma for
  invisp), in [0, 1]. rgb_gain: Brooks et al.'s brightness gain, the digital gain the ISP
  is assumed to have applied (1: none); unprocessing divides by it. tone_model: how the
  render's tone is undone (jisp.isp.tone.TONE_MODELS; "upi" is Brooks et al.'s)."""
  gamma = _check(protocol)
  lin = unprocess.unprocess(jnp.asarray(rgb, jnp.float32), cam, tone_model)  # WB undone
  x = lin * _target_gains(cam) / rgb_gain                          # the protocol's WB
  return tone.gamma_compress(x, gamma) if gamma else x


def raw_to_rgb(raw, cam: unprocess.CameraParams, protocol: str = "invisp",
               tone_model: str = "upi"):
  """The protocol's RAW -> sRGB by UPI's forward `process` (white balance already applied)."""
  gamma = _check(protocol)
  x = jnp.asarray(raw, jnp.float32)
  lin = tone.gamma_expand(x, gamma) if gamma else x
  return unprocess.process(lin / _target_gains(cam), cam, tone_model)


# A camera for photos whose camera is unknown: UPI's average camera, 12-bit, with the middle
# of UPI's white-balance ranges as its as-shot white balance.
DEFAULT_PROFILE = CameraProfile(
    pattern="RGGB", black_level=(0.0, 0.0, 0.0, 0.0), white_level=4095.0,
    wb=(float(np.mean(unprocess.RED_GAIN_RANGE)), 1.0, float(np.mean(unprocess.BLUE_GAIN_RANGE))),
    color_matrix=tuple(map(tuple, mean_xyz2cam().tolist())),
    rgb_cam=tuple(map(tuple, mean_cam2rgb().tolist())), bits=12, camera="UPI average camera")
