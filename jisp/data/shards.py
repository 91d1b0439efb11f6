"""TFRecord patch shards: the on-disk format between `prepare` and the tf.data pipeline.

One example = one aligned (raw, rgb) patch pair plus where it came from:

  raw, rgb          raw little-endian bytes of the patch, dtype given by the dataset's
                    `encoding` ("float16" or "uint16" = round(x * 65535), values in [0, 1])
  raw_shape, rgb_shape   int64[3]  (H, W, C)
  file_id           bytes: the source file's name (unique inside one prepared folder)
  camera            bytes: camera model string
  pos               int64[2]: (y, x) of the patch's top-left pixel in the pair arrays

The encoding is a dataset-wide fact stored in manifest.json, so the parse function can
decode with a static dtype and shape (tf.data needs both to batch).

manifest.json lists every shard as {"file", "n" (examples), "bytes", "sha256"}, so a
deleted, truncated or corrupted shard is found (`verify_shards`) before anything reads it;
`load_prepared` is the one reader of a prepared folder's manifest, and refuses data of
another format or pair-protocol version (`check_manifest`).

TensorFlow is imported lazily (`import_tf`), so this module can be imported for the helpers
below on a machine without it.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import pathlib
import uuid

import numpy as np

from jisp.core.errors import DataError
from jisp.core.fileio import load_manifest

ENCODINGS = ("float16", "uint16")
MANIFEST = "manifest.json"
# Version of the manifest layout (2: shard bytes + sha256). The pair protocols have their
# own number, jisp.data.pairs.PROTOCOL_VERSION; both are checked by `check_manifest`.
MANIFEST_VERSION = 2
_TMP_MARK = ".tmp-"   # temp files are "<final name>.tmp-<random>"; see `is_temp_file`.


def import_tf():
  """Imports TensorFlow quietly, CPU only: the accelerators belong to JAX."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices elsewhere: nothing left to hide.
  return tf


def encode_array(x, encoding):
  """float array (or one already in the storage dtype) -> little-endian bytes."""
  x = np.asarray(x)
  if encoding == "float16" and x.dtype == np.float16:
    return x.astype("<f2").tobytes()
  if encoding == "uint16" and x.dtype == np.uint16:
    return x.astype("<u2").tobytes()
  x = x.astype(np.float32)
  if encoding == "float16":
    return x.astype("<f2").tobytes()
  if encoding == "uint16":
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
      raise ValueError(f"uint16 encoding needs values in [0, 1], got [{x.min()}, {x.max()}]")
    return np.round(x * 65535.0).astype("<u2").tobytes()
  raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def decode_array(buf, shape, encoding):
  """Inverse of `encode_array` in numpy (tests, tools)."""
  if encoding == "float16":
    return np.frombuffer(buf, "<f2").reshape(shape).astype(np.float32)
  if encoding == "uint16":
    return np.frombuffer(buf, "<u2").reshape(shape).astype(np.float32) / 65535.0
  raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def serialize_example(tf, raw, rgb, *, file_id, camera, pos, encoding):
  """One patch pair -> serialized tf.train.Example bytes."""
  f = tf.train.Feature
  b = lambda v: f(bytes_list=tf.train.BytesList(value=[v]))
  i = lambda v: f(int64_list=tf.train.Int64List(value=[int(t) for t in v]))
  feats = {
      "raw": b(encode_array(raw, encoding)),
      "rgb": b(encode_array(rgb, encoding)),
      "raw_shape": i(np.shape(raw)),
      "rgb_shape": i(np.shape(rgb)),
      "file_id": b(str(file_id).encode("utf-8")),
      "camera": b(str(camera).encode("utf-8")),
      "pos": i(pos),
  }
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def is_temp_file(path):
  return _TMP_MARK in pathlib.Path(path).name


class ShardWriter:
  """Writes one TFRecord shard to a temp name; `commit()` renames it into place.

  A shard therefore either exists complete under its final name or not at all; `abort()`
  (or leaving a `with` block by an exception) deletes the temp file.
  """

  def __init__(self, path, *, encoding="float16"):
    if encoding not in ENCODINGS:
      raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    self._tf = import_tf()
    self.path = pathlib.Path(path)
    self.tmp_path = self.path.with_name(f"{self.path.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    self.encoding = encoding
    self.count = 0
    self._writer = self._tf.io.TFRecordWriter(str(self.tmp_path))

  def write(self, raw, rgb, *, file_id, camera, pos):
    self._writer.write(serialize_example(self._tf, raw, rgb, file_id=file_id, camera=camera,
                                         pos=pos, encoding=self.encoding))
    self.count += 1

  def close_temp(self):
    """Flushes and closes the temp file (step 1 of a two-step commit of several shards)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def commit(self):
    self.close_temp()
    with open(self.tmp_path, "rb+") as f:  # on disk before it has its final name
      os.fsync(f.fileno())
    os.replace(self.tmp_path, self.path)
    return self.path

  def abort(self):
    try:
      self.close_temp()  # may raise again on a full disk: the temp file goes regardless
    finally:
      self._writer = None
      self.tmp_path.unlink(missing_ok=True)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.commit()
    else:
      self.abort()


def make_parse_fn(raw_shape, rgb_shape, encoding):
  """A tf.data map fn: serialized Example -> dict(raw, rgb float32, file_id, camera, pos).

  Shapes are static (from the manifest) so that batching works; a record whose stored
  shape disagrees fails loudly in `tf.reshape` rather than being silently misread.
  """
  tf = import_tf()
  if encoding not in ENCODINGS:
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
  spec = {
      "raw": tf.io.FixedLenFeature([], tf.string),
      "rgb": tf.io.FixedLenFeature([], tf.string),
      "raw_shape": tf.io.FixedLenFeature([3], tf.int64),
      "rgb_shape": tf.io.FixedLenFeature([3], tf.int64),
      "file_id": tf.io.FixedLenFeature([], tf.string),
      "camera": tf.io.FixedLenFeature([], tf.string),
      "pos": tf.io.FixedLenFeature([2], tf.int64),
  }
  dtype = tf.float16 if encoding == "float16" else tf.uint16
  scale = 1.0 if encoding == "float16" else 1.0 / 65535.0

  def decode(buf, shape):
    x = tf.io.decode_raw(buf, dtype, little_endian=True)
    x = tf.cast(tf.reshape(x, shape), tf.float32) * scale
    return tf.ensure_shape(x, shape)

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    return {
        "raw": decode(ex["raw"], tuple(raw_shape)),
        "rgb": decode(ex["rgb"], tuple(rgb_shape)),
        "file_id": ex["file_id"],
        "camera": ex["camera"],
        "pos": ex["pos"],
    }

  return parse


def read_shard(path, raw_shape, rgb_shape, encoding):
  """All examples of one shard as a list of numpy dicts (tests, inspection)."""
  tf = import_tf()
  parse = make_parse_fn(raw_shape, rgb_shape, encoding)
  out = []
  for ex in tf.data.TFRecordDataset(str(path)).map(parse).as_numpy_iterator():
    ex["file_id"] = ex["file_id"].decode("utf-8")
    ex["camera"] = ex["camera"].decode("utf-8")
    out.append(ex)
  return out


# --------------------------------------------------------------------------- integrity

def file_digest(path, chunk: int = 1 << 20) -> dict:
  """{"bytes": size, "sha256": hex digest} of a file."""
  h = hashlib.sha256()
  n = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
      n += len(block)
  return {"bytes": n, "sha256": h.hexdigest()}


def shard_entry(path, n: int) -> dict:
  """A manifest `shards` entry for a written shard: name, example count, size, checksum."""
  return {"file": pathlib.Path(path).name, "n": int(n), **file_digest(path)}


def shard_problem(path, entry: dict, full: bool = True) -> str | None:
  """None if the shard at `path` is the one `entry` describes, else one line saying why not.

  full=False checks existence and size only (a stat); full=True also the sha256.
  """
  path = pathlib.Path(path)
  want = entry.get("bytes")
  if want is None or not entry.get("sha256"):
    return f"{path}: the manifest records no size/checksum for this shard"
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    return f"{path}: shard is missing"
  except OSError as e:
    return f"{path}: cannot read shard ({e.strerror or e})"
  if size != int(want):
    what = "truncated" if size < int(want) else "longer than recorded"
    return f"{path}: shard is {what} ({size} of {int(want)} bytes)"
  if full:
    try:
      got = file_digest(path)["sha256"]
    except OSError as e:
      return f"{path}: cannot read shard ({e.strerror or e})"
    if got != entry["sha256"]:
      return f"{path}: shard is corrupted (sha256 differs from the manifest)"
  return None


def verify_shards(data_dir, entries, full: bool = True) -> dict:
  """{file name: problem line} for the broken shards among manifest `entries` ({} if all
  are intact). Files are hashed in parallel threads (hashlib releases the GIL)."""
  data_dir = pathlib.Path(data_dir)
  entries = list(entries)
  if not entries:
    return {}
  check = lambda e: shard_problem(data_dir / e["file"], e, full)
  workers = min(8, os.cpu_count() or 1, len(entries)) if full else 1
  if workers > 1:
    with cf.ThreadPoolExecutor(workers) as ex:
      problems = list(ex.map(check, entries))
  else:
    problems = [check(e) for e in entries]
  return {e["file"]: p for e, p in zip(entries, problems) if p}


def _redo_hint(man: dict, data_dir) -> str:
  raw = man.get("raw_dir") or "RAW_DIR"
  return f"`jisp prepare --raw-dir {raw} --out NEW_FOLDER`"


def check_manifest(man: dict, data_dir) -> dict:
  """`man` if this jisp can read it; DataError naming the folder otherwise (data made by
  an older jisp: another manifest layout or pair-protocol version)."""
  from jisp.data.pairs import PROTOCOL_VERSION  # lazy: pairs pulls in the ISP code
  data_dir = pathlib.Path(data_dir)
  version = man.get("version")
  proto = man.get("protocol_version")
  if version != MANIFEST_VERSION or proto != PROTOCOL_VERSION:
    got = f"manifest version {version}, protocol version {proto}"
    raise DataError(
        f"{data_dir}: prepared by another jisp version ({got}; this one reads manifest "
        f"version {MANIFEST_VERSION}, protocol version {PROTOCOL_VERSION}: RAW targets "
        f"white-balanced with gains / max and never clipped, sRGB rendered without "
        f"adjust_maximum and stored as JPEG 4:2:2); re-run "
        f"{_redo_hint(man, data_dir)} into a new folder")
  shard_lists = man.get("shards")
  needed = ["shards"] if not isinstance(shard_lists, dict) else []
  if isinstance(shard_lists, dict) and any(shard_lists.values()):
    needed = [k for k in ("raw_shape", "rgb_shape") if k not in man]
  if needed:
    raise DataError(f"{data_dir / MANIFEST}: manifest has no {needed[0]!r}; re-run "
                    f"{_redo_hint(man, data_dir)} into a new folder")
  return man


def load_prepared(data_dir) -> dict:
  """The checked manifest of a `jisp prepare` folder; DataError (one line) otherwise."""
  data_dir = pathlib.Path(data_dir)
  if data_dir.is_dir() and not (data_dir / MANIFEST).exists():
    raise DataError(f"{data_dir / MANIFEST}: no manifest; run `jisp prepare --out "
                    f"{data_dir}` first")
  return check_manifest(load_manifest(data_dir), data_dir)
