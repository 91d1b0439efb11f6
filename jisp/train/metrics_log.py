"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard events and the console."""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.summary import scalar as scalar_summary


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


class _AppendOnly:
  """A file that grows by whole records only.

  Each record is one unbuffered write; when the disk fills part-way, the file is cut back
  to the record before, so readers never meet a torn line or event, and nothing is left
  in a buffer to fail again at close or at exit.
  """

  def __init__(self, path):
    self.name = path
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def append(self, data: bytes) -> None:
    size = os.fstat(self._fd).st_size
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(self._fd, view):]
    except OSError as e:
      try:
        os.ftruncate(self._fd, size)
      except OSError:
        pass
      raise OSError(e.errno, e.strerror, self.name) from None  # the loop makes it one line

  def close(self) -> None:
    os.close(self._fd)


def _tf_record(payload: bytes) -> bytes:
  """TFRecord framing, the container of TensorBoard event files."""
  header = struct.pack("<Q", len(payload))
  return (header + struct.pack("<I", masked_crc32c(header)) + payload
          + struct.pack("<I", masked_crc32c(payload)))


class MetricsLog:
  """Only process 0 writes; others hold a no-op log."""

  def __init__(self, workdir, enabled: bool, total_steps: int):
    self.enabled = enabled
    self.total = total_steps
    self._t0 = time.time()
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = _AppendOnly(os.path.join(workdir, "metrics.jsonl"))
      # TensorBoard events in tensorboardX's protos, written here rather than through its
      # SummaryWriter, whose thread flushes again at exit: a full disk there printed
      # tracebacks after the one-line error.
      tb_dir = os.path.join(workdir, "tensorboard")
      os.makedirs(tb_dir, exist_ok=True)
      self._tb = _AppendOnly(os.path.join(
          tb_dir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"))
      self._tb.append(_tf_record(event_pb2.Event(
          wall_time=time.time(), file_version="brain.Event:2").SerializeToString()))

  def _line(self, rec: dict) -> None:
    self._jsonl.append((json.dumps(rec) + "\n").encode())

  def event(self, **rec) -> None:
    if self.enabled:
      self._line(rec)

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    rec.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()})
    self._line(rec)
    now = time.time()
    self._tb.append(b"".join(
        _tf_record(event_pb2.Event(wall_time=now, step=int(step),
                                   summary=scalar_summary(k, float(v))).SerializeToString())
        for k, v in values.items()))

  def progress(self, step: int, values: dict[str, float]) -> None:
    """One plain console line per log step with the headline numbers."""
    if not self.enabled:
      return
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    elapsed = time.time() - self._t0
    print(f"step {step}/{self.total} {shown} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
