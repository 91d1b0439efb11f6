"""Resuming a reconstruction: the finished chunks of an image's tiled prediction, kept next
to its outputs (OUT/.<stem>.tiles/) with a fingerprint of everything that decides them.

A save is one .npy of consecutive chunks, written atomically; `TileStore.open` keeps the
saves of the same fingerprint that are whole and in sequence from the first patch, and
removes the rest (a save cut short by a kill, another run's or options' tiles), saying so.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core.fileio import atomic_path, atomic_write_json

# Finished chunks are saved at least this often (seconds of sampling), and whenever the
# unsaved ones reach SAVE_BYTES.
SAVE_SECONDS = 30.0
SAVE_BYTES = 64 << 20


class TileStore:
  """The finished chunks of one image's prediction, kept next to its outputs.

  OUT/.<stem>.tiles/run.json holds the fingerprint of everything that decides the
  patches; each save is one .npy of consecutive chunks named by its patch range, written
  atomically. `open` keeps what belongs to the same fingerprint (and is whole) and
  removes the rest.
  """

  def __init__(self, folder, fingerprint: dict, *, save_seconds: float = SAVE_SECONDS,
               save_bytes: int = SAVE_BYTES):
    self.folder = Path(folder)
    self.fingerprint = json.loads(json.dumps(fingerprint))  # as JSON reads it back
    self.save_seconds = float(save_seconds)
    self.save_bytes = int(save_bytes)
    self.note = None         # what `open` found, one line for the log
    self.parts: list = []    # (start, end, path) of the usable saved parts
    self.saved = 0           # patches on disk
    self._pending: list = []
    self._pending_bytes = 0
    self._last = time.monotonic()

  @property
  def meta(self) -> Path:
    return self.folder / "run.json"

  def open(self) -> int:
    """Reads what a previous run left; returns the number of patches it can reuse."""
    if self.folder.exists():
      try:
        old = json.loads(self.meta.read_text())
      except (OSError, ValueError):
        old = None
      if old != self.fingerprint:
        differ = sorted(k for k in self.fingerprint
                        if not isinstance(old, dict) or old.get(k) != self.fingerprint[k])
        self.note = (f"{self.folder}: tiles of another run, options or input "
                     f"({', '.join(differ) or 'unreadable'} differ(s)): starting over")
        shutil.rmtree(self.folder, ignore_errors=True)
    self.folder.mkdir(parents=True, exist_ok=True)
    if not self.meta.exists():
      atomic_write_json(self.meta, self.fingerprint)
    for tmp in self.folder.glob(".*.tmp"):  # a save cut short by a kill
      tmp.unlink(missing_ok=True)
    self.parts = self._whole_parts()
    self.saved = self.parts[-1][1] if self.parts else 0
    return self.saved

  def _whole_parts(self) -> list:
    fp = self.fingerprint
    n, chunk, shape = fp["patches"], fp["chunk"], tuple(fp["out_patch"])
    parts = []
    for p in self.folder.glob("*.npy"):
      try:
        s, e = (int(v) for v in p.stem.split("-"))
      except ValueError:
        p.unlink(missing_ok=True)
        continue
      parts.append((s, e, p))
    parts.sort()
    good, expect = [], 0
    for s, e, p in parts:
      ok = s == expect and e > s and (e % chunk == 0 or e == n) and e <= n
      if ok:
        try:
          a = np.load(p, mmap_mode="r")
          ok = a.dtype == np.float32 and a.shape == (e - s,) + shape
        except (OSError, ValueError):
          ok = False
      if not ok:
        break
      good.append((s, e, p))
      expect = e
    for s, e, p in parts[len(good):]:
      p.unlink(missing_ok=True)
    return good

  def stored(self):
    """Yields (first patch index, patches) of the saved parts in order; a part that
    fails to load ends the sequence (it and the later ones are removed)."""
    for i, (s, e, p) in enumerate(self.parts):
      try:
        a = np.load(p)
        if not np.all(np.isfinite(a)):
          raise ValueError("non-finite")
      except (OSError, ValueError):
        for _, _, q in self.parts[i:]:
          q.unlink(missing_ok=True)
        self.parts = self.parts[:i]
        self.saved = s
        return
      yield s, a

  def append(self, start: int, patches) -> None:
    """One finished chunk; saved with the others once enough time or bytes accumulated."""
    self._pending.append((start, np.asarray(patches, np.float32)))
    self._pending_bytes += self._pending[-1][1].nbytes
    if (time.monotonic() - self._last >= self.save_seconds
        or self._pending_bytes >= self.save_bytes):
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    start = self._pending[0][0]
    arr = np.concatenate([a for _, a in self._pending])
    path = self.folder / f"{start:09d}-{start + len(arr):09d}.npy"
    with atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        np.save(f, arr)
    self.parts.append((start, start + len(arr), path))
    self.saved = start + len(arr)
    self._pending, self._pending_bytes = [], 0
    self._last = time.monotonic()

  def discard(self) -> None:
    shutil.rmtree(self.folder, ignore_errors=True)


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def params_digest(params) -> str:
  """sha256 over the parameter leaves (shape, dtype, bytes): which weights made tiles."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    a = np.asarray(leaf)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _key_list(key) -> list:
  k = key if key.dtype == jnp.uint32 else jax.random.key_data(key)
  return np.asarray(k).tolist()


def fingerprint(run, predictor, tile, layout, path, key, camera=None, *,
                params_sha: str | None = None) -> dict:
  """Everything that decides one image's predicted patches (TileStore's run.json): the
  jisp version, the input file's bytes and size, the run (task, workdir, step, config,
  parameter bytes), the predict options, devices and platform, the tiling (`tile`:
  overlap, grid, shared noise; `layout` its patches), the chunk size, the key and the
  camera features."""
  from jisp import __version__
  io = predictor.io
  q = predictor.patch // int(getattr(io, "out_scale", 1))
  b = predictor.chunk_size(len(layout))
  dev = predictor.mesh.devices.flat[0]
  try:
    config = json.dumps(run.config.to_dict(), sort_keys=True, default=str)
  except AttributeError:
    config = json.dumps(run.config, sort_keys=True, default=str)
  return {
      "jisp": __version__, "input": _digest(Path(path).read_bytes()),
      "input_name": Path(path).name, "size": [int(layout.height), int(layout.width)],
      "task": run.task.name, "workdir": run.workdir, "step": int(run.step),
      "config": _digest(config.encode()),
      "params": params_sha or params_digest(run.params),
      "options": json.loads(json.dumps(dataclasses.asdict(predictor.options), default=str)),
      "net_chunk": predictor.net_chunk_for(b), "devices": int(predictor.n_dev),
      "platform": f"{dev.platform} {getattr(dev, 'device_kind', '')}",
      "tiling": [tile.overlap, tile.grid, tile.shared_noise], "patch": predictor.patch,
      "patches": len(layout), "chunk": b,
      "out_patch": [q, q, io.out_channels],
      "key": _key_list(key),
      "camera": None if not (io.camera and camera) else
      {k: np.asarray(v, np.float32).tolist() for k, v in camera.items()},
  }
