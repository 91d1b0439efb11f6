"""tf.data input pipeline over prepared patch shards (see jisp.data.prepare).

`ShardSource` yields the process-local part of each global batch as numpy arrays; the train
loop turns them into one global jax.Array with `jax.make_array_from_process_local_data`.

Per process: shard files i, i+n, ... (or, with fewer shards than processes, every n-th
element of the common stream) -> per-epoch shuffle -> random crop + flip + rot90, applied
to RAW and sRGB as ONE tensor (they are concatenated on channels, so the transform cannot
differ) -> batch -> prefetch. TensorFlow runs on the CPU only.

Determinism and resume. Every random choice is a pure function of (seed, epoch) or
(seed, element index):
  * epoch e's file order: stateless shuffle keyed by (seed, e), the same in every process
    (needed so element-level sharding partitions the same stream);
  * epoch e's element order: a shuffle buffer seeded by (seed, process, e);
  * element k's crop / flip / rotation: stateless ops keyed by (seed, process, k), where k
    counts elements this process has taken since the start (k = e * epoch_size + j).
So the stream depends on nothing but the position, and the state is just the number of
batches consumed. `set_state` rebuilds the stream at epoch e = consumed // epoch_size and
skips the remaining r < epoch_size serialized records BEFORE parsing and augmentation:
resuming costs at most one epoch of reading raw bytes, no decoding, and the state is a few
integers. We chose this over tf.data iterator checkpoints, which would store the whole
shuffle buffer (tens of MB) in every checkpoint and tie it to one TF version.

Camera features. With `camera=True` every batch also carries each patch's camera features
("rgb2cam" (b, 3, 3), "wb" (b, 3); jisp.core.camera.camera_features) for tasks that take
the target camera as an input. They come from the manifest, not the records: a record
names its source file (file_id), and the manifest holds that file's white balance and
colour matrix (and its camera's profile), so prepared folders need no rebuild. The lookup happens
on the host after batching, a pure function of the record, so resume stays exact.

Integrity. Before anything is built, the shards this process will read are checked against
the manifest (size, and by default sha256): a deleted, truncated or corrupted shard is one
DataError line naming it, not a TensorFlow traceback at some later step. A record that is
damaged anyway when read (TFRecord's own CRC) is the same kind of one-line error.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib

import numpy as np

from jisp.core.camera import CameraProfile, camera_features
from jisp.core.errors import DataError, OptionError
from jisp.data import shards as shards_lib

STATE_VERSION = 1
VERIFY_MODES = ("full", "size", "none")
_log = logging.getLogger(__name__)


def file_features(man: dict) -> dict[str, dict[str, np.ndarray]]:
  """{file_id (a file's manifest path): camera features} of a prepared folder's manifest,
  as evaluation computes them from the file itself (camera_features(capture.profile())):
  the file's own white balance and colour matrix (its rgb_cam derived as raw_io does),
  else its camera's profile."""
  from jisp.data.raw_io import rgb_cam_from_color_matrix, usable_color_matrix
  cams = man.get("cameras") or {}
  out = {}
  for f in man.get("files", []):
    cam = cams.get(f.get("camera"))
    if f.get("status") != "ok" or cam is None:
      continue
    d = {**cam, "wb": f.get("wb") or cam.get("wb")}
    cm = usable_color_matrix((f.get("meta") or {}).get("color_matrix"))
    if cm is not None:  # per file: files of one camera name can differ (virtual cameras)
      d.update(color_matrix=cm, rgb_cam=rgb_cam_from_color_matrix(cm))
    out[f["path"]] = camera_features(CameraProfile.from_dict(d))
  return out


def _seed_mix(*parts):
  """A stable 63-bit int from ints (hash, not arithmetic, so nearby seeds do not collide)."""
  d = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).hexdigest()
  return int(d[:15], 16)


class ShardSource:
  """Process-local batches {"rgb": (b,P,P,3), "raw": (b,P,P,C)} float32 from prepared shards.

  Args:
    data_dir: folder written by `jisp prepare` (manifest.json + *.tfrecord).
    split: "train", "test", ... (a split present in the manifest).
    patch_size: P <= stored patch; a random (augment) or centre (no augment) crop. None:
      the stored size. Crop offsets are even so that a patch keeps its file's CFA phase.
    local_batch: examples per call of `next()` in this process.
    seed: makes the whole stream reproducible.
    process_index, process_count: this process among the jax processes.
    augment: random crop + horizontal flip + rot90 (all 8 dihedral transforms).
    shuffle_buffer: element shuffle buffer; 0 = no shuffling at all (file order kept).
    repeat: cycle epochs forever; with False the last batch may be short and `next()`
      raises StopIteration at the end.
    with_info: also return "file_id" (str array) and "pos" (b, 2) of each patch.
    verify: how this process's shards are checked before use: "full" (size + sha256),
      "size" (a stat per file), "none".
    camera: also return each patch's camera features "rgb2cam" (b, 3, 3) and "wb" (b, 3)
      (module docstring).
  """

  def __init__(self, data_dir, split, *, patch_size=None, local_batch, seed,
               process_index=0, process_count=1, augment=True, shuffle_buffer=1024,
               repeat=True, with_info=False, verify="full", camera=False):
    self.data_dir = pathlib.Path(data_dir)
    self.split = split
    self.local_batch = int(local_batch)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.augment = bool(augment)
    self.shuffle_buffer = int(shuffle_buffer)
    self.repeat = bool(repeat)
    self.with_info = bool(with_info)
    self.camera = bool(camera)
    if self.local_batch < 1:
      raise ValueError(f"local_batch must be >= 1, got {local_batch}")
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if verify not in VERIFY_MODES:
      raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")

    man = shards_lib.load_prepared(self.data_dir)
    self.manifest = man
    self.features = file_features(man) if self.camera else {}
    if self.camera and not self.features:
      raise DataError(f"{self.data_dir}/manifest.json lists no camera profiles, so its "
                      f"patches have no camera features; {self._rebuild_hint()}")
    shard_list = man.get("shards", {}).get(split, [])
    total = sum(int(s["n"]) for s in shard_list)
    if total == 0:
      have = sorted(k for k, v in man.get("shards", {}).items() if v)
      raise DataError(f"{self.data_dir}: split {split!r} has no patches (splits with data: "
                      f"{have})")
    self.raw_shape = tuple(int(v) for v in man["raw_shape"])
    self.rgb_shape = tuple(int(v) for v in man["rgb_shape"])
    self.encoding = man.get("encoding", "float16")
    stored = self.raw_shape[0]
    self.patch_size = stored if patch_size is None else int(patch_size)
    if not 1 <= self.patch_size <= stored:
      raise OptionError(f"patch_size {patch_size} must be in [1, {stored}] (the stored "
                        f"patch of {self.data_dir})")

    n, i = self.process_count, self.process_index
    if len(shard_list) >= n:
      # Whole files per process: no process reads a byte another one needs.
      mine = shard_list[i::n]
      self.element_sharding = False
      self.epoch_size = sum(int(s["n"]) for s in mine)
    else:
      # Fewer files than processes: everyone reads all files and keeps every n-th record.
      mine = shard_list
      self.element_sharding = True
      self.epoch_size = max(0, (total - i + n - 1) // n)
    if self.epoch_size == 0:
      raise DataError(f"{self.data_dir}: split {split!r} has {total} patches, none for "
                      f"process {i} of {n}")
    if verify != "none":
      broken = shards_lib.verify_shards(self.data_dir, mine, full=verify == "full")
      if broken:
        first = broken[sorted(broken)[0]]
        others = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise DataError(f"{first}{others}; {self._rebuild_hint()}")
    self.files = [str(self.data_dir / s["file"]) for s in mine]
    self.fingerprint = hashlib.sha256(
        json.dumps([[s["file"], s["n"]] for s in shard_list]).encode()).hexdigest()[:16]
    self._file_seed = _seed_mix(self.seed, 1)          # shared by all processes
    self._shuffle_seed = _seed_mix(self.seed, 2, i)    # per process
    self._aug_seed = _seed_mix(self.seed, 3, i)        # per process
    self._batches = 0
    self._it = None  # built on the first next(), so a set_state() right away costs nothing

  def _rebuild_hint(self):
    raw = self.manifest.get("raw_dir") or "RAW_DIR"
    return f"re-run `jisp prepare --raw-dir {raw} --out {self.data_dir}` to rebuild it"

  # ------------------------------------------------------------------ dataset

  def _build(self, batches):
    """(Re)creates the iterator positioned after `batches` batches."""
    tf = shards_lib.import_tf()
    consumed = int(batches) * self.local_batch
    e0, r = divmod(consumed, self.epoch_size)
    if not self.repeat and e0 >= 1:
      self._it = iter(())  # already past the single epoch
      return
    parse = shards_lib.make_parse_fn(self.raw_shape, self.rgb_shape, self.encoding)
    files = tf.constant(self.files)
    nfiles = len(self.files)
    size = self.epoch_size
    shuffle = self.shuffle_buffer > 0
    n, i = self.process_count, self.process_index
    file_seed, shuffle_seed = self._file_seed, self._shuffle_seed

    def epoch(e):
      fs = files
      if shuffle and nfiles > 1:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(nfiles), seed=tf.stack([tf.constant(file_seed, tf.int64), e]))
        fs = tf.gather(files, order)
      ds = tf.data.Dataset.from_tensor_slices(fs).interleave(
          tf.data.TFRecordDataset, cycle_length=min(nfiles, 8), block_length=1,
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      if self.element_sharding:
        ds = ds.shard(n, i)
      if shuffle:
        ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed + e * 1_000_003,
                        reshuffle_each_iteration=False)
      return ds.enumerate().map(lambda j, rec: (e * size + j, rec))

    if self.repeat:
      epochs = tf.data.Dataset.counter(start=e0)
    else:
      epochs = tf.data.Dataset.range(e0, e0 + 1)
    ds = epochs.flat_map(epoch).skip(r)  # skip on serialized records: no parse, no augment
    ds = ds.map(self._make_example_fn(parse), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(self.local_batch, drop_remainder=self.repeat)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    ds = ds.with_options(opts)
    self._ds = ds
    self._it = iter(ds)

  def _make_example_fn(self, parse):
    tf = shards_lib.import_tf()
    p, s = self.patch_size, self.raw_shape[0]
    c_raw = self.raw_shape[2]
    augment, aug_seed = self.augment, self._aug_seed
    with_info, with_id = self.with_info, self.with_info or self.camera
    half_span = (s - p) // 2  # even offsets 0, 2, ..., 2 * half_span

    def fn(idx, rec):
      ex = parse(rec)
      x = tf.concat([ex["raw"], ex["rgb"]], axis=-1)  # one tensor: identical transforms
      if augment:
        key = tf.stack([tf.constant(aug_seed, tf.int64), tf.cast(idx, tf.int64)])
        k = tf.random.experimental.stateless_split(key, 4)
        oy = 2 * tf.random.stateless_uniform([], k[0], 0, half_span + 1, dtype=tf.int32)
        ox = 2 * tf.random.stateless_uniform([], k[1], 0, half_span + 1, dtype=tf.int32)
        flip = tf.random.stateless_uniform([], k[2], 0, 2, dtype=tf.int32)
        rot = tf.random.stateless_uniform([], k[3], 0, 4, dtype=tf.int32)
        x = x[oy:oy + p, ox:ox + p]
        x = tf.cond(flip > 0, lambda: tf.reverse(x, axis=[1]), lambda: x)
        x = tf.image.rot90(x, k=rot)
      else:
        o = half_span // 2 * 2
        x = x[o:o + p, o:o + p]
      x = tf.ensure_shape(x, (p, p, c_raw + 3))
      out = {"raw": x[..., :c_raw], "rgb": x[..., c_raw:]}
      if with_id:
        out["file_id"] = ex["file_id"]
      if with_info:
        out["pos"] = ex["pos"]
      return out

    return fn

  # ------------------------------------------------------------------ API

  def next(self):
    """The next process-local batch as numpy; StopIteration at the end (repeat=False)."""
    if self._it is None:
      self._build(self._batches)
    tf = shards_lib.import_tf()
    try:
      b = next(self._it)
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
      msg = " ".join(str(e.message).split())
      raise DataError(f"{self.data_dir}: a shard cannot be read ({msg}); "
                      f"{self._rebuild_hint()}") from None
    self._batches += 1
    out = {"rgb": b["rgb"].numpy(), "raw": b["raw"].numpy()}
    ids = (np.array([v.decode("utf-8") for v in b["file_id"].numpy()])
           if (self.with_info or self.camera) else None)
    if self.camera:
      out.update(self._features_of(ids))
    if self.with_info:
      out["file_id"] = ids
      out["pos"] = b["pos"].numpy()
    return out

  def _features_of(self, ids) -> dict[str, np.ndarray]:
    missing = sorted({i for i in ids if i not in self.features})
    if missing:
      raise DataError(f"{self.data_dir}/manifest.json: no camera profile for {missing[0]!r}, "
                      f"whose patches are in the shards; {self._rebuild_hint()}")
    return {k: np.stack([self.features[i][k] for i in ids]) for k in ("rgb2cam", "wb")}

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()

  def get_state(self):
    """JSON-serialisable position: batches consumed plus what makes it meaningful."""
    return {"version": STATE_VERSION, "batches": self._batches, "split": self.split,
            "seed": self.seed, "local_batch": self.local_batch,
            "process_index": self.process_index, "process_count": self.process_count,
            "patch_size": self.patch_size, "augment": self.augment,
            "shuffle_buffer": self.shuffle_buffer, "epoch_size": self.epoch_size,
            "data": self.fingerprint}

  def set_state(self, state):
    """Positions the source so the next batch is the one an unbroken run would yield.

    Exact when the data, seed and batch layout match the state's. Otherwise (a grown data
    folder, another process count) exact replay is impossible; the source then warns and
    resumes after the same number of global examples, which is the best approximation.
    """
    batches = int(state["batches"])
    same = all(state.get(k) == getattr(self, k) for k in (
        "seed", "local_batch", "process_count", "split", "patch_size", "augment",
        "shuffle_buffer")) and state.get("data") == self.fingerprint
    if not same:
      seen = batches * int(state.get("local_batch", self.local_batch)) * int(
          state.get("process_count", self.process_count))
      new = seen // (self.local_batch * self.process_count)
      _log.warning("ShardSource.set_state: data or batch layout changed since the state "
                   "was saved (%s); resuming approximately at batch %d", {
                       k: state.get(k) for k in ("data", "seed", "local_batch",
                                                 "process_count")}, new)
      batches = new
    self._batches = int(batches)
    self._it = None  # rebuilt, positioned, on the next call of next()

  def close(self):
    self._it = None
    self._ds = None


def make_eval_batches(data_dir, split="test", patch_size=None, max_batches=8, batch=8, *,
                      with_info=False):
  """Up to `max_batches` fixed held-out batches (no augmentation, no shuffling, centre crop).

  Returns a list of numpy dicts like `ShardSource.next()`. A final short batch is kept only
  when it is the only one (so a jit-compiled eval step sees one shape). An empty list when
  the split has no patches (e.g. a tiny folder whose files all went to train).
  """
  man = shards_lib.load_prepared(data_dir)
  if sum(int(s["n"]) for s in man.get("shards", {}).get(split, [])) == 0:
    _log.warning("make_eval_batches: %s has no %r patches", data_dir, split)
    return []
  src = ShardSource(data_dir, split, patch_size=patch_size, local_batch=batch, seed=0,
                    augment=False, shuffle_buffer=0, repeat=False, with_info=with_info)
  out = []
  try:
    while len(out) < max_batches:
      try:
        b = src.next()
      except StopIteration:
        break
      if len(b["rgb"]) < batch and out:
        break
      out.append(b)
  finally:
    src.close()
  return out
