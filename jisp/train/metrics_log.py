"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard events and the console."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from tensorboardX import SummaryWriter



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
      # tensorboardX: TensorBoard event files without TensorFlow (accelerator images).
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def _append(self, rec: dict) -> None:
    try:
      self._jsonl.write(json.dumps(rec) + "\n")
      self._jsonl.flush()
    except OSError as e:  # a full disk: name the file (the loop turns it into one line)
      raise OSError(e.errno, e.strerror, self._jsonl.name) from None

  def event(self, **rec) -> None:
    if self.enabled:
      self._append(rec)

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    rec.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()})
    self._append(rec)
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), int(step))

  def progress(self, step: int, values: dict[str, float]) -> None:
    """One plain console line per log step with the headline numbers."""
    if not self.enabled:
      return
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    elapsed = time.time() - self._t0
    print(f"step {step}/{self.total} {shown} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.enabled:
      try:
        self._jsonl.close()
      except OSError:
        pass  # a full disk: what could be written was flushed line by line
      try:
        self._tb.close()
      except OSError:
        pass
