"""Tone curves: power-law gamma, UPI's smoothstep tone map, the sRGB transfer curve, and
LibRaw's output curve (the one the pair protocol's render applies).

Pure jnp, elementwise, jit-able; numpy input accepted.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

# The pair protocol's render (jisp.data.raw_io.render_srgb): LibRaw's gamma curve with
# power 1/2.222 and a linear toe of slope 4.5 (BT.709's shape), and no tone curve.
RENDER_GAMMA = (2.222, 4.5)
# How a display-referred image is taken back to linear light (and forward):
#   upi     Brooks et al.'s model of a camera render: smoothstep tone map over gamma 2.2
#   render  the protocol's own render curve (RENDER_GAMMA), no tone map
TONE_MODELS = ("upi", "render")

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


@functools.lru_cache(maxsize=None)
def libraw_curve_constants(power: float, slope: float) -> tuple[float, float, float, float]:
  """(g0, g1, g3, g4) of LibRaw's (dcraw's) gamma curve: y = g1 x below x = g3, else
  (1 + g4) x^g0 - g4, with g0 = 1/power, g1 = slope and the join found by bisection so
  that value and slope are continuous (dcraw's gamma_curve)."""
  g0, g1 = 1.0 / power, float(slope)
  lo, hi = (0.0, 1.0) if g1 >= 1 else (1.0, 0.0)
  g2 = 0.0
  for _ in range(48):
    g2 = (lo + hi) / 2
    if ((g2 / g1) ** (-g0) - 1) / g0 - 1 / g2 > -1:
      hi = g2
    else:
      lo = g2
  return g0, g1, g2 / g1, g2 * (1 / g0 - 1)


def render_encode(x, power: float = RENDER_GAMMA[0], slope: float = RENDER_GAMMA[1]):
  """Linear -> display by LibRaw's curve (continuous, before its 16-bit table).
  Input is clipped to [0, 1]."""
  g0, g1, g3, g4 = libraw_curve_constants(power, slope)
  x = jnp.clip(jnp.asarray(x), 0.0, 1.0)
  hi = (1 + g4) * jnp.maximum(x, g3) ** g0 - g4
  return jnp.where(x < g3, x * g1, hi)


def render_decode(y, power: float = RENDER_GAMMA[0], slope: float = RENDER_GAMMA[1]):
  """Display -> linear, the inverse of render_encode. Input is clipped to [0, 1]."""
  g0, g1, g3, g4 = libraw_curve_constants(power, slope)
  y = jnp.clip(jnp.asarray(y), 0.0, 1.0)
  hi = ((jnp.maximum(y, g3 * g1) + g4) / (1 + g4)) ** power
  return jnp.where(y < g3 * g1, y / g1, hi)


def check_tone_model(model: str) -> str:
  if model not in TONE_MODELS:
    raise ValueError(f"tone model must be one of {', '.join(TONE_MODELS)}, got {model!r}")
  return model


def to_linear(y, model: str = "upi"):
  """A rendered image in [0, 1] back to linear light by the tone model (TONE_MODELS)."""
  if check_tone_model(model) == "render":
    return render_decode(y)
  return gamma_expand(inverse_smoothstep(y), 2.2)


def from_linear(x, model: str = "upi"):
  """Linear light -> rendered image by the tone model; the inverse of to_linear."""
  if check_tone_model(model) == "render":
    return render_encode(x)
  return smoothstep(gamma_compress(x, 2.2))
