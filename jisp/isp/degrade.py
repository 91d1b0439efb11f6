"""High-order degradation D^2(y) (Real-ESRGAN style) that keeps the colour of y.

DiffRAW trains its colour-position condition on c = x = D^2(y): the DSLR image put through
two rounds of blur -> resize -> noise -> JPEG, with the parameters "tuned to keep strict
colour consistency with y". Each operation here is chosen to preserve local mean colour:

  blur    anisotropic Gaussian kernel normalised to sum 1 (reflect padding);
  resize  down by a random factor r and back up, as one separable linear operator whose
          rows sum to 1 (triangle antialias filter down, linear interpolation up);
  noise   zero-mean Gaussian or signal-dependent (Poisson-like) noise, grey or per channel;
  JPEG    libjpeg's round trip (jisp.isp.jpeg with its 8-bit arithmetic and hard
          rounding, since nothing differentiates through D^2): YCbCr, 4:2:0, the standard
          tables at a random integer quality;
  finally the per-image channel means are set back to those of y (`match_mean`), which
  removes the small shifts that clipping and quantisation leave.

Everything is jnp with an explicit key and static shapes, vmapped over the batch, so it runs
inside the jit-compiled train step. Per-image random parameters are drawn inside.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jisp.isp import jpeg as jpeg_lib


@struct.dataclass
class Params:
  """Ranges are (low, high), drawn uniformly per image; noise sigmas in 8-bit units.

  A pytree: every field but kernel_size is a leaf, so one compiled function serves any
  setting (pass Params as a jit argument) and settings could themselves be random.
  """
  kernel_size: int = struct.field(pytree_node=False, default=7)
  blur_sigma: tuple = (0.2, 2.0)
  blur_sigma2: tuple = (0.2, 1.2)
  blur_prob2: float = 0.8
  resize_scale: tuple = (0.5, 1.0)
  resize_scale2: tuple = (0.6, 1.0)
  noise_sigma: tuple = (1.0, 10.0)
  noise_sigma2: tuple = (1.0, 8.0)
  poisson_scale: tuple = (0.05, 1.0)
  poisson_prob: float = 0.4
  gray_noise_prob: float = 0.4
  jpeg_quality: tuple = (40.0, 95.0)
  jpeg_quality2: tuple = (50.0, 95.0)
  match_mean: bool = True


def params_from_config(cfg) -> Params:
  """Params from an ml_collections block (missing keys keep the defaults)."""
  if cfg is None:
    return Params()
  d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  names = {f.name for f in dataclasses.fields(Params)}
  unknown = set(d) - names
  if unknown:
    raise ValueError(f"degrade: unknown parameter(s) {sorted(unknown)} (known: {sorted(names)})")
  return Params(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _uniform(key, rng):
  return jax.random.uniform(key, (), minval=rng[0], maxval=rng[1])


# ---------------------------------------------------------------------------- blur

def gaussian_kernel(size: int, sigma_x, sigma_y, theta):
  """(size, size) anisotropic Gaussian, rotated by theta, normalised to sum 1."""
  r = (size - 1) / 2.0
  yy, xx = np.meshgrid(np.arange(size) - r, np.arange(size) - r, indexing="ij")
  c, s = jnp.cos(theta), jnp.sin(theta)
  u = c * xx + s * yy
  v = -s * xx + c * yy
  k = jnp.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
  return k / jnp.sum(k)


def blur(img, kernel):
  """Depthwise convolution of (H, W, C) with a (k, k) kernel, reflect padding."""
  k = kernel.shape[0]
  p = k // 2
  c = img.shape[-1]
  x = jnp.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")[None]
  w = jnp.broadcast_to(kernel[:, :, None, None], (k, k, 1, c))
  out = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", feature_group_count=c,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out[0]


# ---------------------------------------------------------------------------- resize

def _tri(d):
  return jnp.maximum(1.0 - jnp.abs(d), 0.0)


def down_up_matrix(n: int, r):
  """(n, n) operator: resample n samples to r*n (triangle filter of width 1/r, i.e.
  antialiased bilinear) and back to n (linear interpolation). Rows sum to 1."""
  i = np.arange(n, dtype=np.float32)
  m = jnp.floor(r * n).astype(jnp.int32)            # samples kept after the downscale
  j = jnp.arange(n, dtype=jnp.float32)               # candidate low-res sample index
  valid = j < m
  centre = (j + 0.5) / r - 0.5                       # where low-res sample j sits (hi-res px)
  wd = _tri((i[None, :] - centre[:, None]) * r)      # (n_low, n_hi)
  wd = wd / jnp.maximum(jnp.sum(wd, axis=1, keepdims=True), 1e-12)
  pos = jnp.clip((i + 0.5) * r - 0.5, 0.0, (m - 1).astype(jnp.float32))  # hi px in low units
  wu = _tri(pos[:, None] - j[None, :]) * valid[None, :]                  # (n_hi, n_low)
  wu = wu / jnp.maximum(jnp.sum(wu, axis=1, keepdims=True), 1e-12)
  return wu @ wd


def resize_down_up(img, r):
  h, w = img.shape[:2]
  mh, mw = down_up_matrix(h, r), down_up_matrix(w, r)
  return jnp.einsum("ij,jkc,lk->ilc", mh, img, mw)


# ---------------------------------------------------------------------------- noise

def add_noise(key, img, sigma255, poisson_scale, use_poisson, gray):
  """Gaussian (sigma/255) or Poisson-like (var = scale * x / 255) noise, grey or colour."""
  k_n = key
  shape = img.shape[:-1] + (1,)
  n = jnp.where(gray, jnp.broadcast_to(jax.random.normal(k_n, shape), img.shape),
                jax.random.normal(k_n, img.shape))
  std = jnp.where(use_poisson,
                  jnp.sqrt(jnp.maximum(img, 0.0) * poisson_scale / 255.0),
                  sigma255 / 255.0)
  return img + std * n


# ---------------------------------------------------------------------------- JPEG

def jpeg(img, quality):
  """JPEG round trip of (H, W, 3) in [0, 1] at `quality` (4:2:0, standard tables), as
  libjpeg computes it up to its integer DCT: jisp.isp.jpeg with hard rounding and 8-bit
  arithmetic (8-bit pixels in and out). A real-valued quality is rounded, as libjpeg's is
  an integer.
  """
  return jpeg_lib.jpeg_simulate(img, quality, subsampling="4:2:0", rounding="round",
                                integer_samples=True)


# ---------------------------------------------------------------------------- D^2

def _round(key, img, p: Params, second: bool):
  ks = jax.random.split(key, 12)
  sig_rng = p.blur_sigma2 if second else p.blur_sigma
  sx, sy = _uniform(ks[0], sig_rng), _uniform(ks[1], sig_rng)
  theta = jax.random.uniform(ks[2], (), minval=0.0, maxval=np.pi)
  blurred = blur(img, gaussian_kernel(p.kernel_size, sx, sy, theta))
  do_blur = jax.random.uniform(ks[3]) < (p.blur_prob2 if second else 1.0)
  img = jnp.where(do_blur, blurred, img)
  img = resize_down_up(img, _uniform(ks[4], p.resize_scale2 if second else p.resize_scale))
  img = add_noise(ks[5], img, _uniform(ks[6], p.noise_sigma2 if second else p.noise_sigma),
                  _uniform(ks[7], p.poisson_scale),
                  jax.random.uniform(ks[8]) < p.poisson_prob,
                  jax.random.uniform(ks[9]) < p.gray_noise_prob)
  img = jnp.clip(img, 0.0, 1.0)
  return jpeg(img, _uniform(ks[10], p.jpeg_quality2 if second else p.jpeg_quality))


def degrade_one(key, y, p: Params = Params()):
  """D^2 of one (H, W, 3) image in [0, 1]."""
  k1, k2 = jax.random.split(key)
  x = _round(k2, _round(k1, y, p, False), p, True)
  shift = jnp.mean(y, axis=(0, 1)) - jnp.mean(x, axis=(0, 1))
  return jnp.clip(x + jnp.where(p.match_mean, shift, 0.0), 0.0, 1.0)


def degrade(key, y, p: Params = Params()):
  """D^2 of a batch (B, H, W, 3) in [0, 1]; one independent draw per image."""
  y = jnp.asarray(y, jnp.float32)
  keys = jax.random.split(key, y.shape[0])
  return jax.vmap(lambda k, im: degrade_one(k, im, p))(keys, y)
