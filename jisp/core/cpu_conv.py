"""Config `cpu_conv`: which XLA:CPU library computes a compiled step's convolutions.

XLA:CPU in the pinned jaxlib hands convolutions to YNNPACK by default, and otherwise runs
its own (Eigen) convolution kernels. Which is faster depends on the work: measured on the
paper U-Net (README "Speed"), XLA's own kernels run the train step's convolutions faster
(forward, input gradient and kernel gradient alike, most of all the 64-channel layers at
64x64), while YNNPACK runs sampling's forward-only network calls a little faster. So the
choice is made per compiled program, by XLA compile options, and nothing else changes:
dots, reductions and fused elementwise work stay where XLA puts them.

Values: "auto" (XLA's own for train steps, YNNPACK for inference and evaluation), "xla",
or "ynnpack" (the jaxlib's default everywhere). Accelerators ignore it.
"""
from __future__ import annotations

import jax

from jisp.core.errors import ConfigError

CHOICES = ("auto", "xla", "ynnpack")
KEY = "cpu_conv"

# XLA's compile option listing the op kinds it may hand to YNNPACK. The pinned jaxlib's
# default list is these two plus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION; a compile
# option replaces the whole list, so "xla" gives the default less convolutions
# (tests/test_cpu_conv.py checks that against the installed jaxlib).
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_WITHOUT_CONVOLUTION = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"


def check(value, key: str = KEY) -> str:
  if value not in CHOICES:
    raise ConfigError(f"bad value for config key '{key}': {value!r} (expected one of "
                      f"{', '.join(CHOICES)})")
  return value


def requested(config) -> str:
  """The config's choice ("auto" for configs saved before the key existed)."""
  value = config.get(KEY, "auto") if hasattr(config, "get") else "auto"
  return check(value)


def library(config, purpose: str) -> str:
  """"xla" or "ynnpack": the library a `purpose` ("train" or "infer") program's
  convolutions run on under the config."""
  if purpose not in ("train", "infer"):
    raise ValueError(f"purpose {purpose!r}: expected 'train' or 'infer'")
  value = requested(config)
  if value != "auto":
    return value
  return "xla" if purpose == "train" else "ynnpack"


def compiler_options(config, purpose: str, backend: str | None = None) -> dict:
  """The XLA compile options (for jax.jit's `compiler_options`) that put a `purpose`
  program's convolutions on the library the config asks for; {} off the CPU."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or library(config, purpose) == "ynnpack":
    return {}
  return {YNN_FUSION_OPTION: YNN_WITHOUT_CONVOLUTION}
