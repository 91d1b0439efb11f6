"""A minimal TensorBoard event-file writer (scalars only), with no TensorFlow.

The train loop must run on accelerator images without TF, yet write event files that
TensorBoard reads. The format is small: TFRecord framing (length, masked CRC32C) around
`Event` protocol buffers that we encode by hand (wall_time=1, step=2, file_version=3,
summary=5; Summary.value=1; Value.tag=1, Value.simple_value=2).
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _make_crc32c_table():
  poly = 0x82F63B78
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
  return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, file_version: str | None = None,
           summary: bytes | None = None) -> bytes:
  msg = _varint((1 << 3) | 1) + struct.pack("<d", wall_time)
  if step is not None:
    msg += _varint((2 << 3) | 0) + _varint(int(step))
  if file_version is not None:
    msg += _field_bytes(3, file_version.encode())
  if summary is not None:
    msg += _field_bytes(5, summary)
  return msg


def _scalar_summary(values: dict[str, float]) -> bytes:
  out = b""
  for tag, v in values.items():
    val = _field_bytes(1, tag.encode()) + _varint((2 << 3) | 5) + struct.pack("<f", float(v))
    out += _field_bytes(1, val)
  return out


class EventWriter:
  """Appends scalar summaries to one events.out.tfevents.* file in `logdir`."""

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._write(_event(time.time(), file_version="brain.Event:2"))

  def _write(self, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    self._f.write(header + struct.pack("<I", _masked_crc(header)) + data
                  + struct.pack("<I", _masked_crc(data)))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._write(_event(time.time(), step=step, summary=_scalar_summary(values)))
    self._f.flush()

  def close(self) -> None:
    self._f.close()
