"""Multi-process start-up through jax.distributed, driven by flags or environment.

Environment (what launch/ scripts set): JISP_COORDINATOR (host:port),
JISP_NUM_PROCESSES, JISP_PROCESS_ID. On managed clusters (SLURM, Cloud TPU) calling
jax.distributed.initialize() with no arguments auto-detects everything: set
JISP_DISTRIBUTED=auto for that.
"""
from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initialise jax.distributed if asked to and not done yet; True when multi-process."""
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  coordinator = coordinator or os.environ.get("JISP_COORDINATOR")
  if num_processes is None and os.environ.get("JISP_NUM_PROCESSES"):
    num_processes = int(os.environ["JISP_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JISP_PROCESS_ID"):
    process_id = int(os.environ["JISP_PROCESS_ID"])
  if os.environ.get("JISP_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
  elif coordinator and (num_processes or 1) > 1:
    kwargs = {}
    if os.environ.get("JISP_HEARTBEAT_TIMEOUT"):
      # A lost peer is detected by missed heartbeats; tests shorten the wait.
      kwargs["heartbeat_timeout_seconds"] = int(os.environ["JISP_HEARTBEAT_TIMEOUT"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, **kwargs)
  return jax.process_count() > 1
