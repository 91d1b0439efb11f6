"""Injected faults in the data layer (issue 15): each must end in one line, or be repaired,
and never lose what already works.

Faults: a shard deleted / truncated / corrupted (same size), a broken manifest, data of an
older protocol version, an unreadable RAW (permission denied, made real for root by
dropping CAP_DAC_OVERRIDE with setpriv), an empty RAW folder, a full disk (a 1-2 MB tmpfs
when this runs as root, and a monkeypatched ENOSPC on the manifest write everywhere).
"""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from jisp.core.errors import DataError
from jisp.data import pipeline
from jisp.data import prepare as prep
from jisp.data import shards as shards_lib

PATCH = 32
KW = dict(patch=PATCH, stride=PATCH, split=0.5, shards=2, workers=1, progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  from jisp.data import virtual_camera
  root = tmp_path_factory.mktemp("faults")
  paths = virtual_camera.write_virtual_raw_dir(root / "raw", 4, seed=6, size=64)
  extra = virtual_camera.write_virtual_raw_dir(root / "more", 12, seed=7, size=128)
  man = prep.prepare(root / "raw", root / "out", **KW)
  assert man["counts"]["train"]["files"] and man["counts"]["test"]["files"]
  return {"raw": root / "raw", "out": root / "out", "man": man, "paths": paths,
          "extra": extra}


def _copy(base, tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  shutil.copytree(base["raw"], raw)
  shutil.copytree(base["out"], out)
  return raw, out


def _digests(out):
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _examples(out, man):
  keys = []
  for split, lst in man["shards"].items():
    for s in lst:
      for e in shards_lib.read_shard(out / s["file"], man["raw_shape"], man["rgb_shape"],
                                     man["encoding"]):
        keys.append((split, e["file_id"], int(e["pos"][0]), int(e["pos"][1])))
  return sorted(keys)


def _one_line(e):
  msg = str(e.value)
  assert isinstance(e.value, DataError) and "\n" not in msg
  return msg


def _break(path, how):
  if how == "delete":
    path.unlink()
  elif how == "truncate":
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
  else:  # same size, a few bytes changed in the middle: only the checksum can tell
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0xFF
    path.write_bytes(bytes(data))


FAULTS = ["delete", "truncate", "corrupt"]


@pytest.mark.parametrize("how", FAULTS)
def test_rerun_rebuilds_a_broken_shard(base, tmp_path, how):
  raw, out = _copy(base, tmp_path)
  man0 = base["man"]
  victim = man0["shards"]["train"][1]["file"]
  _break(out / victim, how)
  notes = []
  man = prep.prepare(raw, out, log=notes.append, **KW)
  assert len(notes) == 1 and victim in notes[0] and "\n" not in notes[0]
  # every listed shard is intact again and nothing else is in the folder
  for lst in man["shards"].values():
    assert not shards_lib.verify_shards(out, lst)
  listed = {s["file"] for lst in man["shards"].values() for s in lst}
  assert {p.name for p in out.iterdir()} == listed | {"manifest.json"}
  assert victim not in listed
  # the same patches as before, each file in its split, untouched test shards
  assert _examples(out, man) == _examples(base["out"], man0)
  old = {f["path"]: f for f in man0["files"]}
  for f in man["files"]:
    assert (f["status"], f.get("split"), f.get("split_rule")) == (
        old[f["path"]]["status"], old[f["path"]].get("split"),
        old[f["path"]].get("split_rule"))
  assert man["shards"]["test"] == man0["shards"]["test"]
  assert man["counts"] == man0["counts"]
  # and the repaired folder is a no-op again
  before = _digests(out)
  assert prep.prepare(raw, out, **KW) == man
  assert _digests(out) == before


def test_rerun_names_the_broken_shard_when_its_raw_is_gone(base, tmp_path):
  raw, out = _copy(base, tmp_path)
  entry = base["man"]["shards"]["test"][0]
  _break(out / entry["file"], "truncate")
  victim = next(f["path"] for f in base["man"]["files"] if entry["file"] in f.get("shards", []))
  (raw / victim).unlink()
  before = _digests(out)
  with pytest.raises(DataError) as e:
    prep.prepare(raw, out, **KW)
  msg = _one_line(e)
  assert entry["file"] in msg and victim in msg and "truncated" in msg
  assert "new folder" in msg
  assert _digests(out) == before  # nothing changed


@pytest.mark.parametrize("how", FAULTS)
def test_shard_source_refuses_a_broken_shard_before_reading(base, tmp_path, how):
  _, out = _copy(base, tmp_path)
  victim = base["man"]["shards"]["train"][0]["file"]
  _break(out / victim, how)
  with pytest.raises(DataError) as e:
    pipeline.ShardSource(out, "train", local_batch=2, seed=0)
  msg = _one_line(e)
  assert victim in msg and "jisp prepare" in msg
  assert {"delete": "missing", "truncate": "truncated", "corrupt": "corrupted"}[how] in msg
  # the other split is fine and still usable
  pipeline.ShardSource(out, "test", local_batch=2, seed=0, repeat=False).next()


def test_damage_found_only_when_reading_is_one_line(base, tmp_path):
  """verify='none' skips the up-front check; TFRecord's CRC still catches the damage."""
  _, out = _copy(base, tmp_path)
  for s in base["man"]["shards"]["train"]:
    _break(out / s["file"], "corrupt")
  src = pipeline.ShardSource(out, "train", local_batch=64, seed=0, verify="none",
                             shuffle_buffer=0, augment=False)
  with pytest.raises(DataError) as e:
    src.next()
  assert str(out) in _one_line(e)


def test_broken_or_old_manifest_is_one_line(base, tmp_path):
  _, out = _copy(base, tmp_path)
  text = (out / "manifest.json").read_text()
  (out / "manifest.json").write_text(text[: len(text) // 2])
  for call in (lambda: pipeline.ShardSource(out, "train", local_batch=2, seed=0),
               lambda: prep.prepare(base["raw"], out, **KW)):
    with pytest.raises(DataError) as e:
      call()
    assert "manifest.json" in _one_line(e) and "JSON" in str(e.value)
  # data of protocol version 1 (green = 1 gains, clipped targets): refused by both
  man = json.loads(text)
  man["protocol_version"] = 1
  (out / "manifest.json").write_text(json.dumps(man))
  before = _digests(out)
  for call in (lambda: pipeline.ShardSource(out, "train", local_batch=2, seed=0),
               lambda: pipeline.make_eval_batches(out),
               lambda: prep.prepare(base["raw"], out, **KW)):
    with pytest.raises(DataError) as e:
      call()
    msg = _one_line(e)
    assert str(out) in msg and "protocol version 1" in msg and "new folder" in msg
  assert _digests(out) == before


def test_empty_raw_dir_says_so(tmp_path, capsys):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "notes.txt").write_text("no RAW here")
  with pytest.raises(DataError) as e:
    prep.prepare(tmp_path / "raw", tmp_path / "out", **KW)
  assert f"no RAW files found in {tmp_path / 'raw'}" in _one_line(e)
  assert not (tmp_path / "out").exists()
  import argparse
  args = prep.add_prepare_args(argparse.ArgumentParser()).parse_args(
      ["--raw-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--no-progress"])
  assert prep.run_prepare(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no RAW files found" in err[0]


_DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_raw_is_skipped_and_retried(base, tmp_path):
  """chmod 000 on one RAW. As root, reading it is denied only without CAP_DAC_OVERRIDE:
  prepare then runs in a child that dropped it (setpriv), exactly as the audit did."""
  raw = tmp_path / "raw"
  shutil.copytree(base["raw"], raw)
  bad = raw / "unreadable.dng"
  shutil.copy(base["extra"][0], bad)
  bad.chmod(0)
  out = tmp_path / "out"
  code = (f"from jisp.data import prepare as p; p.prepare({str(raw)!r}, {str(out)!r}, "
          f"patch={PATCH}, stride={PATCH}, split=0.5, shards=2, workers=1, progress=False)")
  if os.geteuid() == 0:
    if shutil.which("setpriv") is None:
      pytest.skip("root without setpriv: cannot make a read fail")
    r = subprocess.run(_DROP_DAC + [sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
  else:
    exec(code)
  man = json.loads((out / "manifest.json").read_text())
  by_path = {f["path"]: f for f in man["files"]}
  assert by_path["unreadable.dng"]["status"] == "skipped"
  assert "Permission denied" in by_path["unreadable.dng"]["reason"]
  assert man["n_ok"] == len(base["paths"])
  # readable again: the next run prepares it (the skip was not final)
  bad.chmod(0o644)
  man = prep.prepare(raw, out, **KW)
  assert {f["path"]: f["status"] for f in man["files"]}["unreadable.dng"] == "ok"
  assert man["n_ok"] == len(base["paths"]) + 1 and man["n_skipped"] == 0


def _grow(base, raw, n):
  for p in base["extra"][:n]:
    shutil.copy(p, raw / f"more_{p.name}")


def test_manifest_write_fails_with_enospc(base, tmp_path, monkeypatch):
  raw, out = _copy(base, tmp_path)
  _grow(base, raw, 2)
  before = _digests(out)

  def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(prep, "atomic_write_json", full)
  with pytest.raises(DataError) as e:
    prep.prepare(raw, out, **KW)
  msg = _one_line(e)
  assert str(out) in msg and "no space left on device" in msg and "intact" in msg
  assert _digests(out) == before  # the new batch's shards were removed again


@pytest.fixture
def small_disk(tmp_path):
  mnt = tmp_path / "small"
  mnt.mkdir()
  size = 1_500_000
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
  try:
    yield mnt, size
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_the_old_data(base, tmp_path, small_disk):
  mnt, size = small_disk
  raw = tmp_path / "raw"
  shutil.copytree(base["raw"], raw)
  out = mnt / "out"
  shutil.copytree(base["out"], out)
  before = _digests(out)
  used = sum(p.stat().st_size for p in out.iterdir())
  _grow(base, raw, 12)  # 12 files of 16 patches: several times what is left
  assert used < size // 2
  with pytest.raises(DataError) as e:
    prep.prepare(raw, out, **KW)
  msg = _one_line(e)
  assert str(out) in msg and "no space left on device" in msg and "intact" in msg
  assert _digests(out) == before
  # once there is room (here: fewer new files), the same folder grows normally
  for p in base["extra"][2:]:
    (raw / f"more_{p.name}").unlink()
  man = prep.prepare(raw, out, **KW)
  assert man["n_ok"] == len(base["paths"]) + 2
