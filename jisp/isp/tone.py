"""Tone curves: power-law gamma, UPI's smoothstep tone map, and the sRGB transfer curve.

Pure jnp, elementwise, jit-able; numpy input accepted.
"""
from __future__ import annotations

import jax.numpy as jnp

# Clamp before fractional powers: d/dx x**(1/g) is infinite at 0, which turns gradients
# into NaN for black pixels; 1e-8 is far below one code of a 16-bit raw.
_EPS = 1e-8


def gamma_compress(x, gamma: float = 2.2):
  """max(x, 1e-8) ** (1/gamma): linear -> display. Negative input is clamped to 1e-8."""
  return jnp.maximum(jnp.asarray(x), _EPS) ** (1.0 / gamma)


def gamma_expand(x, gamma: float = 2.2):
  """max(x, 1e-8) ** gamma: display -> linear (same clamp as gamma_compress)."""
  return jnp.maximum(jnp.asarray(x), _EPS) ** gamma


def smoothstep(x):
  """3x^2 - 2x^3, the global tone curve UPI (Brooks et al. 2019) fits to camera renders.

  Input is clipped to [0, 1] where the cubic is monotone.
  """
  x = jnp.clip(jnp.asarray(x), 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def inverse_smoothstep(y):
  """Closed-form inverse of smoothstep on [0, 1]: 0.5 - sin(asin(1 - 2y) / 3).

  Input is clipped to [0, 1] (asin is undefined outside it).
  """
  y = jnp.clip(jnp.asarray(y), 0.0, 1.0)
  return 0.5 - jnp.sin(jnp.arcsin(1.0 - 2.0 * y) / 3.0)


def srgb_encode(x):
  """Linear -> sRGB transfer curve (IEC 61966-2-1): 12.92x below 0.0031308, else
  1.055 x^(1/2.4) - 0.055. Input is clipped to [0, 1]."""
  x = jnp.clip(jnp.asarray(x), 0.0, 1.0)
  # The power branch is evaluated on a clamped copy so its gradient stays finite at 0.
  hi = 1.055 * jnp.maximum(x, 0.0031308) ** (1.0 / 2.4) - 0.055
  return jnp.where(x <= 0.0031308, 12.92 * x, hi)


def srgb_decode(y):
  """sRGB -> linear (inverse of srgb_encode): y/12.92 below 0.04045, else
  ((y + 0.055)/1.055)^2.4. Input is clipped to [0, 1]."""
  y = jnp.clip(jnp.asarray(y), 0.0, 1.0)
  hi = ((jnp.maximum(y, 0.04045) + 0.055) / 1.055) ** 2.4
  return jnp.where(y <= 0.04045, y / 12.92, hi)
