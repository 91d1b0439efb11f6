"""FLOPs of compiled computations, by XLA's own cost analysis (an FMA counts 2)."""
from __future__ import annotations


def compiled_flops(compiled, num_devices: int = 1) -> float | None:
  """Total FLOPs of one call of a compiled (possibly SPMD-partitioned) computation.

  An SPMD-partitioned executable reports the cost of one partition. A loop body (lax.scan,
  lax.map) is counted once, whatever its trip count.
  """
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"]) * num_devices
