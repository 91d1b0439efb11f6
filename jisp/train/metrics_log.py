"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard events and the console."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from jisp.train.tb_events import EventWriter


def read_metrics(path) -> list[dict]:
  """Records of metrics.jsonl, keeping the latest record of each (kind, step).

  After a resume, steps past the restored checkpoint are logged again; the later lines
  describe the run that continued, so they win.
  """
  latest: dict[tuple, dict] = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      rec = json.loads(line)
      if "step" not in rec or "event" in rec:
        continue
      kind = "eval" if any(k.startswith("eval/") for k in rec) else "train"
      latest[(kind, rec["step"])] = rec
  return [latest[k] for k in sorted(latest, key=lambda k: (k[1], k[0]))]


class MetricsLog:
  """Only process 0 writes; others hold a no-op log."""

  def __init__(self, workdir, enabled: bool, total_steps: int):
    self.enabled = enabled
    self.total = total_steps
    self._t0 = time.time()
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = EventWriter(os.path.join(workdir, "tensorboard"))

  def event(self, **rec) -> None:
    if self.enabled:
      self._jsonl.write(json.dumps(rec) + "\n")
      self._jsonl.flush()

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    rec.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()})
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {k: float(v) for k, v in values.items()})

  def progress(self, step: int, values: dict[str, float]) -> None:
    """One console line per log step: a progress bar plus the headline numbers."""
    if not self.enabled:
      return
    frac = step / max(self.total, 1)
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    elapsed = time.time() - self._t0
    print(f"[{bar}] {step}/{self.total} {shown} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
