"""Unprocessing (Brooks et al. 2019, "Unprocessing Images for Learned Raw Denoising", UPI).

A simple invertible camera model turns sRGB photos into plausible linear camera RGB and back:

  process:   cam --x wb_gains--> clip --cam2rgb--> clip --gamma 1/2.2--> smoothstep --> sRGB
  unprocess: sRGB --inverse smoothstep--> gamma 2.2 --rgb2cam--> safe 1/wb_gains --> clip --> cam

Camera colour matrices, gain ranges and the shot/read noise relation are the paper's
published values (facts about real cameras); the code is our own, in jnp. Everything is a
pure function of its inputs and an explicit PRNG key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jisp.core.camera import SRGB_TO_XYZ, XYZ_TO_SRGB
from jisp.isp import tone

# XYZ -> camera matrices of four real cameras (Adobe DNG data, as listed by UPI). A random
# convex combination of them is a plausible new camera.
XYZ2CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
], np.float64)

# Linear sRGB (D65) <-> CIE XYZ: jisp's one set of constants (LibRaw's).
RGB2XYZ = SRGB_TO_XYZ
XYZ2RGB = XYZ_TO_SRGB

# UPI's ranges: white-balance gains the ISP multiplies by, and the noise model
# log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26^2), fitted to real sensors (signals in [0,1]).
RED_GAIN_RANGE = (1.9, 2.4)
BLUE_GAIN_RANGE = (1.5, 1.9)
SHOT_NOISE_RANGE = (1e-4, 1.2e-2)
READ_NOISE_SLOPE, READ_NOISE_INTERCEPT, READ_NOISE_STD = 2.18, 1.20, 0.26


@struct.dataclass
class CameraParams:
  """One virtual camera + capture; a pytree, so it can be vmapped and passed through jit.

  rgb2cam: (3,3) linear sRGB -> camera RGB, rows sum to 1 (white stays white).
  cam2rgb: (3,3) its inverse.
  wb_gains: (3,) (R, 1, B) white-balance gains the ISP multiplies camera RGB by.
  shot_noise, read_noise: scalars; raw variance = shot_noise * x + read_noise.
  """
  rgb2cam: jax.Array
  cam2rgb: jax.Array
  wb_gains: jax.Array
  shot_noise: jax.Array
  read_noise: jax.Array


def random_ccm(key) -> jax.Array:
  """Random sRGB -> camera matrix: convex mix of XYZ2CAMS, times RGB2XYZ, rows normalised."""
  w = jax.random.uniform(key, (len(XYZ2CAMS),), minval=1e-8, maxval=1.0)
  xyz2cam = jnp.einsum("k,kij->ij", w / jnp.sum(w), jnp.asarray(XYZ2CAMS, jnp.float32))
  rgb2cam = xyz2cam @ jnp.asarray(RGB2XYZ, jnp.float32)
  # Row normalisation makes sRGB white map to camera (1,1,1): the white balance alone then
  # carries the illuminant, as in UPI.
  return rgb2cam / jnp.sum(rgb2cam, axis=-1, keepdims=True)


def random_noise_levels(key) -> tuple[jax.Array, jax.Array]:
  """(shot, read): log-uniform shot noise and UPI's log-linear read-noise relation."""
  k_shot, k_read = jax.random.split(key)
  lo, hi = np.log(SHOT_NOISE_RANGE[0]), np.log(SHOT_NOISE_RANGE[1])
  log_shot = jax.random.uniform(k_shot, (), minval=lo, maxval=hi)
  log_read = (READ_NOISE_SLOPE * log_shot + READ_NOISE_INTERCEPT
              + READ_NOISE_STD * jax.random.normal(k_read, ()))
  return jnp.exp(log_shot), jnp.exp(log_read)


def random_camera_params(key) -> CameraParams:
  """Random camera colour, white balance and noise level, as in UPI (no brightness gain)."""
  k_ccm, k_r, k_b, k_noise = jax.random.split(key, 4)
  rgb2cam = random_ccm(k_ccm)
  red = jax.random.uniform(k_r, (), minval=RED_GAIN_RANGE[0], maxval=RED_GAIN_RANGE[1])
  blue = jax.random.uniform(k_b, (), minval=BLUE_GAIN_RANGE[0], maxval=BLUE_GAIN_RANGE[1])
  shot, read = random_noise_levels(k_noise)
  return CameraParams(rgb2cam=rgb2cam, cam2rgb=jnp.linalg.inv(rgb2cam),
                      wb_gains=jnp.stack([red, jnp.ones_like(red), blue]),
                      shot_noise=shot, read_noise=read)


def apply_ccm(image, ccm):
  """(..., 3) pixels times a (3,3) matrix: out_i = sum_j ccm[i, j] * in_j."""
  return jnp.einsum("...j,ij->...i", jnp.asarray(image), ccm)


def safe_invert_gains(image, wb_gains):
  """Divide by the white-balance gains, except near white.

  Plain division would turn a clipped white highlight into a coloured grey that no gain can
  bring back to white; UPI blends the inverse gain towards 1 as the mean intensity goes from
  0.9 to 1 (quadratic ramp), and never dims more than the plain inverse would.
  """
  image = jnp.asarray(image)
  inv = 1.0 / wb_gains
  gray = jnp.mean(image, axis=-1, keepdims=True)
  inflection = 0.9
  mask = (jnp.maximum(gray - inflection, 0.0) / (1.0 - inflection)) ** 2
  safe = jnp.maximum(mask + (1.0 - mask) * inv, inv)
  return image * safe


def unprocess(srgb, params: CameraParams, tone_model: str = "upi"):
  """sRGB (..., H, W, 3) in [0,1] -> noise-free linear camera RGB in [0,1]. tone_model
  (jisp.isp.tone.TONE_MODELS): "upi" inverts Brooks et al.'s smoothstep and gamma 2.2,
  "render" the pair protocol's own render curve."""
  x = tone.to_linear(srgb, tone_model)
  x = apply_ccm(x, params.rgb2cam)
  x = safe_invert_gains(x, params.wb_gains)
  # Saturated colours can leave the camera gamut (rgb2cam has negative entries).
  return jnp.clip(x, 0.0, 1.0)


def process(linear_cam_rgb, params: CameraParams, tone_model: str = "upi"):
  """Linear camera RGB (..., H, W, 3) -> sRGB in [0,1]: the forward model of `unprocess`."""
  x = jnp.asarray(linear_cam_rgb) * params.wb_gains
  x = jnp.clip(x, 0.0, 1.0)  # the sensor saturates before colour correction
  x = apply_ccm(x, params.cam2rgb)
  x = jnp.clip(x, 0.0, 1.0)
  return tone.from_linear(x, tone_model)


def add_noise(key, mosaic, shot, read):
  """Heteroscedastic Gaussian raw noise: x + N(0, shot * x + read).

  The variance is floored at 0 so negative inputs cannot produce NaN.
  """
  x = jnp.asarray(mosaic, jnp.float32)
  var = jnp.maximum(shot * x + read, 0.0)
  return x + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype)


def quantize(x, bits: int, black_level):
  """Linear [0,1] signal -> uint16 raw codes black + x * (white - black), white = 2^bits - 1.

  Rounded to nearest and clipped to [black_level, white]. Clipping at black (not 0) drops the
  negative noise tail real sensors keep; fine for rendering, biased for dark-level noise fits.
  """
  if not 1 <= bits <= 16:
    raise ValueError(f"bits must be in 1..16, got {bits}")
  white = float(2 ** bits - 1)
  black = jnp.asarray(black_level, jnp.float32)
  codes = jnp.round(black + jnp.asarray(x, jnp.float32) * (white - black))
  return jnp.clip(codes, black, white).astype(jnp.uint16)
