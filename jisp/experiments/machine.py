"""What machine a measurement was taken on (printed with every benchmark figure)."""
from __future__ import annotations

import os
import platform

_FLAG_PREFIXES = ("avx", "amx", "fma", "sse4")


def cpu_info() -> dict:
  """CPU model, core count and the instruction-set flags that matter for dense math."""
  model, flags = platform.processor() or platform.machine(), []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
          model = value.strip()
        elif key == "flags" and not flags:
          flags = sorted(v for v in value.split() if v.startswith(_FLAG_PREFIXES))
  except OSError:
    pass
  return {"cpu_model": model, "cpu_count": os.cpu_count() or 0, "cpu_flags": flags}


def device_info() -> dict:
  import jax
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": getattr(dev, "device_kind", ""),
          "jax": jax.__version__}
