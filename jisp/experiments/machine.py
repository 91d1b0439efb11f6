"""What machine a measurement was taken on, and how fast it could go (for MFU).

Peak dense TFLOP/s by accelerator kind, bf16 (the precision training runs in there):
NVIDIA H100 / H200 SXM 989 (H100 datasheet: 1,979 with sparsity), A100 312 (A100
datasheet), Google TPU v4 275, v5e 197, v5p 459, v6e (Trillium) 918 (Cloud TPU system
architecture pages). On a CPU there is no published peak for XLA's kernels: MFU is taken
against the fp32 matmul ceiling measured in the same run (`matmul_ceiling`).
"""
from __future__ import annotations

import math
import os
import platform
import time

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


PEAK_TFLOPS_BF16 = {
    "H100": 989.0, "H200": 989.0, "A100": 312.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def peak_tflops(device_kind: str) -> float | None:
  """The table's bf16 dense peak for a jax device_kind ('NVIDIA H100 80GB HBM3', 'TPU v4'),
  None when the kind is not in it (CPUs)."""
  kind = device_kind or ""
  for name in sorted(PEAK_TFLOPS_BF16, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_TFLOPS_BF16[name]
  return None


def matmul_ceiling(devices: int | None = None, n: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of an fp32 matmul, one (n x n) @ (n x n) per device, sharded over `devices`:
  what this machine does on the easiest dense op."""
  import jax
  import jax.numpy as jnp
  from jisp.core import sharding
  mesh = sharding.make_mesh(devices)
  k = mesh.devices.size
  a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (k * n, n), jnp.float32),
                     sharding.batch_sharding(mesh))
  b = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32),
                     sharding.replicated(mesh))
  f = jax.jit(lambda x, y: x @ y, out_shardings=sharding.batch_sharding(mesh))
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * k * n ** 3 / best / 1e9


def utilisation(achieved_gflops: float | None, n_devices: int, device_kind: str,
                ceiling_gflops: float | None = None) -> dict:
  """{"achieved_tflops", "peak_tflops", "mfu", "mfu_basis"}: MFU against the table's peak
  (all devices) on accelerators, against the measured matmul ceiling on CPUs."""
  peak = peak_tflops(device_kind)
  if peak is not None:
    total, basis = peak * n_devices, f"{device_kind} bf16 dense peak x {n_devices}"
  elif ceiling_gflops:
    total, basis = ceiling_gflops / 1e3, "measured fp32 matmul ceiling"
  else:
    total, basis = None, None
  tf = achieved_gflops / 1e3 if achieved_gflops else None
  return {"achieved_tflops": tf, "peak_tflops": total, "mfu_basis": basis,
          "mfu": tf / total if (tf and total) else None}
