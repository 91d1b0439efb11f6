"""Process environment for the `jisp` entry points, set before jax or TensorFlow start."""
from __future__ import annotations

import os
import sys


def configure(environ=None) -> None:
  """On CPU hosts, split the cores into XLA devices (power of two, at most 8) unless
  XLA_FLAGS already sets a count; quiet TensorFlow's start-up logging.

  Only the host platform reads the device-count flag; GPU/TPU runs are unaffected. It
  does nothing once jax is imported (the flag is read at backend start), so an entry
  point calls it first thing. JISP_CPU_DEVICES chooses the count (a positive integer;
  anything else is a one-line OptionError).
  """
  env = os.environ if environ is None else environ
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  flags = env.get("XLA_FLAGS", "")
  text = str(env.get("JISP_CPU_DEVICES", "") or "").strip()
  if text and not (text.isdigit() and int(text) > 0):
    from jisp.core.errors import OptionError
    raise OptionError(f"environment variable JISP_CPU_DEVICES={text!r} must be a positive "
                      "integer (the number of CPU devices), or unset")
  if "xla_force_host_platform_device_count" in flags or "jax" in sys.modules:
    return
  n = int(text) if text else min(8, os.cpu_count() or 1)
  n = 1 << (n.bit_length() - 1)  # power of two, so common batch sizes divide
  env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()
