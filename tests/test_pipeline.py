"""tf.data pipeline over prepared shards: process sharding, resume, determinism, augmentation."""
import json

import numpy as np
import pytest

from jisp.core.errors import DataError
from jisp.data import pairs, pipeline
from jisp.data import prepare as prep
from jisp.data import shards as shards_lib

PATCH = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from jisp.data import virtual_camera
  root = tmp_path_factory.mktemp("pipe")
  virtual_camera.write_virtual_raw_dir(root / "raw", 4, seed=5, size=128)
  out = root / "out"
  man = prep.prepare(root / "raw", out, patch=PATCH, stride=PATCH, split=0.7, shards=3,
                     workers=1, progress=False)
  assert len(man["shards"]["train"]) == 3
  return out


def _split_keys(data_dir, split):
  man = prep.load_manifest(data_dir)
  keys = []
  for s in man["shards"][split]:
    for e in shards_lib.read_shard(data_dir / s["file"], man["raw_shape"], man["rgb_shape"],
                                   man["encoding"]):
      keys.append((e["file_id"], int(e["pos"][0]), int(e["pos"][1])))
  return keys


def _drain(src):
  keys = []
  while True:
    try:
      b = src.next()
    except StopIteration:
      return keys
    keys += [(f, int(p[0]), int(p[1])) for f, p in zip(b["file_id"], b["pos"])]


@pytest.mark.parametrize("count,shuffle", [(2, 0), (2, 16), (4, 0)])
def test_processes_see_disjoint_patches_covering_the_split(data_dir, count, shuffle):
  """count=2: whole shard files per process; count=4 > 3 shards: element-level sharding."""
  everything = _split_keys(data_dir, "train")
  assert len(set(everything)) == len(everything) > 0
  seen = []
  for i in range(count):
    src = pipeline.ShardSource(data_dir, "train", patch_size=PATCH, local_batch=5, seed=0,
                               process_index=i, process_count=count, augment=False,
                               shuffle_buffer=shuffle, repeat=False, with_info=True)
    assert src.element_sharding == (count > 3)
    keys = _drain(src)
    assert len(keys) == src.epoch_size > 0
    seen.append(set(keys))
  for i in range(count):
    for j in range(i):
      assert not seen[i] & seen[j]
  assert set().union(*seen) == set(everything)


def test_resume_gives_the_identical_next_batch(data_dir):
  kw = dict(patch_size=24, local_batch=8, seed=11)
  a = pipeline.ShardSource(data_dir, "train", **kw)
  k = 9  # 72 elements: past the end of the first epoch
  assert k * 8 > a.epoch_size
  for _ in range(k):
    a.next()
  state = json.loads(json.dumps(a.get_state()))  # what a checkpoint stores
  expected = [a.next() for _ in range(3)]
  b = pipeline.ShardSource(data_dir, "train", **kw)
  b.next()  # a fresh source that has moved elsewhere
  b.set_state(state)
  for e in expected:
    got = b.next()
    np.testing.assert_array_equal(got["rgb"], e["rgb"])
    np.testing.assert_array_equal(got["raw"], e["raw"])
  assert b.get_state()["batches"] == k + 3


def test_deterministic_for_a_seed(data_dir):
  def first(seed, n=3):
    src = pipeline.ShardSource(data_dir, "train", patch_size=24, local_batch=4, seed=seed)
    out = [src.next() for _ in range(n)]
    src.close()
    return out
  a, b, c = first(1), first(1), first(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["rgb"], y["rgb"])
    np.testing.assert_array_equal(x["raw"], y["raw"])
  assert any(not np.array_equal(x["raw"], z["raw"]) for x, z in zip(a, c))
  assert a[0]["rgb"].shape == (4, 24, 24, 3) and a[0]["rgb"].dtype == np.float32
  assert a[0]["raw"].shape == (4, 24, 24, 3)


def _dihedral(x):
  for flip in (False, True):
    y = x[:, ::-1] if flip else x
    for k in range(4):
      yield np.rot90(y, k)


def test_augmentation_identical_on_raw_and_rgb(tmp_path):
  """A hand-made dataset whose raw is rgb plus a 4th channel (packed-like shapes)."""
  s, n = 16, 24
  rng = np.random.default_rng(0)
  rgb = rng.random((n, s, s, 3)).astype(np.float16)
  raw = np.concatenate([rgb, rgb[..., :1]], axis=-1)
  name = "train-b0000-00000-of-00001.tfrecord"
  with shards_lib.ShardWriter(tmp_path / name) as w:
    for i in range(n):
      w.write(raw[i], rgb[i], file_id=f"f{i}", camera="cam", pos=(i, 0))
  (tmp_path / "manifest.json").write_text(json.dumps({
      "version": shards_lib.MANIFEST_VERSION, "protocol_version": pairs.PROTOCOL_VERSION,
      "encoding": "float16", "raw_shape": [s, s, 4], "rgb_shape": [s, s, 3],
      "shards": {"train": [shards_lib.shard_entry(tmp_path / name, n)]}}))
  src = pipeline.ShardSource(tmp_path, "train", patch_size=10, local_batch=n, seed=3,
                             augment=True, with_info=True)
  b = src.next()
  assert b["raw"].shape == (n, 10, 10, 4) and b["rgb"].shape == (n, 10, 10, 3)
  np.testing.assert_array_equal(b["raw"][..., :3], b["rgb"])
  np.testing.assert_array_equal(b["raw"][..., 3], b["rgb"][..., 0])
  # each output is an even-offset crop of its stored patch under one of the 8 dihedral maps
  kinds = set()
  for out, i in zip(b["rgb"], b["pos"][:, 0]):
    src_img = rgb[i].astype(np.float32)
    hits = [(oy, ox, t) for oy in range(0, s - 10 + 1, 2) for ox in range(0, s - 10 + 1, 2)
            for t, d in enumerate(_dihedral(src_img[oy:oy + 10, ox:ox + 10]))
            if np.array_equal(d, out)]
    assert hits, f"output {i} is not a crop + dihedral transform of its patch"
    kinds.add(hits[0][2])
  assert len(kinds) > 2  # the transforms really vary


def test_eval_batches_and_errors(data_dir, tmp_path):
  man = prep.load_manifest(data_dir)
  n_test = man["counts"]["test"]["patches"]
  ev = pipeline.make_eval_batches(data_dir, "test", patch_size=PATCH, max_batches=100,
                                  batch=4, with_info=True)
  assert len(ev) == n_test // 4
  keys = [(f, tuple(p)) for b in ev for f, p in zip(b["file_id"], b["pos"])]
  assert len(set(keys)) == len(keys)
  ev2 = pipeline.make_eval_batches(data_dir, "test", patch_size=PATCH, max_batches=2, batch=4)
  assert len(ev2) == 2
  np.testing.assert_array_equal(ev2[1]["raw"], ev[1]["raw"])  # fixed, unshuffled
  with pytest.raises(ValueError, match="no patches"):
    pipeline.ShardSource(data_dir, "val", local_batch=2, seed=0)
  with pytest.raises(ValueError, match="patch_size"):
    pipeline.ShardSource(data_dir, "train", patch_size=PATCH + 2, local_batch=2, seed=0)
  with pytest.raises(DataError, match="manifest"):
    pipeline.ShardSource(tmp_path, "train", local_batch=2, seed=0)
