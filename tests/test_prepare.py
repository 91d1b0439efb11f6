"""`jisp prepare`: shards + manifest from a RAW folder with good and bad files."""
import argparse
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from jisp.data import prepare as prep
from jisp.data import shards as shards_lib

PATCH = 32
GOOD = 4


def _make_bad_files(d, good_path):
  """The four kinds of bad input the issue names; returns {file name: kind}."""
  from PIL import Image
  data = good_path.read_bytes()
  (d / "truncated.dng").write_bytes(data[:len(data) // 2])
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)).save(
      buf, "JPEG")
  (d / "photo_jpeg.nef").write_bytes(buf.getvalue())
  (d / "random.dng").write_bytes(np.random.default_rng(1).bytes(4096))
  (d / "empty.cr2").write_bytes(b"")
  return {"truncated.dng", "photo_jpeg.nef", "random.dng", "empty.cr2"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  from jisp.data import virtual_camera
  src = tmp_path_factory.mktemp("src")
  paths = virtual_camera.write_virtual_raw_dir(src / "gen", GOOD + 1, seed=3, size=128)
  raw = src / "raw"
  raw.mkdir()
  for p in paths[:GOOD]:
    shutil.copy(p, raw / p.name)
  bad = _make_bad_files(raw, paths[0])
  (raw / "README.txt").write_text("not a raw file; must be ignored, not reported")
  return {"raw": raw, "extra": paths[GOOD], "bad": bad,
          "good": sorted(p.name for p in paths[:GOOD])}


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  # workers=2: the real process-pool path (spawn).
  man = prep.prepare(folder["raw"], out, patch=PATCH, stride=PATCH, split=0.5, shards=2,
                     workers=2, progress=False)
  return out, man


def _snapshot(out):
  return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}


def _all_examples(out, man, split):
  exs = []
  for s in man["shards"].get(split, []):
    got = shards_lib.read_shard(out / s["file"], man["raw_shape"], man["rgb_shape"],
                                man["encoding"])
    assert len(got) == s["n"]
    exs += got
  return exs


def test_good_files_ok_bad_files_skipped_with_reason(folder, prepared):
  out, man = prepared
  by_path = {f["path"]: f for f in man["files"]}
  assert "README.txt" not in by_path  # non-RAW extensions are not candidates at all
  assert sorted(p for p, f in by_path.items() if f["status"] == "ok") == folder["good"]
  for name in folder["bad"]:
    f = by_path[name]
    assert f["status"] == "skipped"
    assert name in f["reason"] and "\n" not in f["reason"]
  assert "empty" in by_path["empty.cr2"]["reason"]
  assert "truncated" in by_path["truncated.dng"]["reason"] or "end of file" in by_path[
      "truncated.dng"]["reason"]
  assert man["n_ok"] == GOOD and man["n_skipped"] == len(folder["bad"])


def test_manifest_contents(folder, prepared):
  out, man = prepared
  on_disk = json.loads((out / "manifest.json").read_text())
  assert on_disk == man
  assert man["protocol"] == "invisp" and man["patch"] == PATCH and man["stride"] == PATCH
  assert man["raw_shape"] == [PATCH, PATCH, 3] and man["rgb_shape"] == [PATCH, PATCH, 3]
  ok = [f for f in man["files"] if f["status"] == "ok"]
  # 128x128 pairs, patch 32, stride 32 -> 16 patches per file
  assert all(f["n_patches"] == 16 for f in ok)
  total = {sp: sum(f["n_patches"] for f in ok if f["split"] == sp) for sp in ("train", "test")}
  for sp in ("train", "test"):
    assert man["counts"][sp]["patches"] == total[sp] > 0  # the small-folder rule: both sides
    assert sum(s["n"] for s in man["shards"][sp]) == total[sp]
  cam = ok[0]["camera"]
  prof = man["cameras"][cam]
  for key in ("pattern", "black_level", "white_level", "wb", "color_matrix"):
    assert prof[key] is not None
  assert prof["pattern"] in ("RGGB", "BGGR", "GRBG", "GBRG") and len(prof["black_level"]) == 4
  # The gains the RAW targets were white-balanced with (what a DNG writer must undo).
  np.testing.assert_allclose(prof["target_gains"], np.divide(prof["wb"], max(prof["wb"])),
                             rtol=1e-6)
  for f in ok:
    np.testing.assert_allclose(f["meta"]["target_gains"], np.divide(f["wb"], max(f["wb"])),
                               rtol=1e-6)
  # the protocol and its version, and every shard's size and checksum, are recorded
  assert man["version"] == 2 and man["protocol_version"] == 3
  assert (man["wb_norm"], man["jpeg_quality"], man["jpeg_subsampling"]) == ("max", 90, "4:2:2")
  for lst in man["shards"].values():
    for sh in lst:
      data = (out / sh["file"]).read_bytes()
      assert sh["bytes"] == len(data) and sh["sha256"] == hashlib.sha256(data).hexdigest()
  assert sum(c["patches"] for c in man["counts"]["train"]["cameras"].values()) == total["train"]
  for f in ok:
    assert len(f["sha256"]) == 64
    assert f["sha256"] == prep.sha256_file(folder["raw"] / f["path"])
    # the recorded split follows the hash rule (or was forced to keep a test set)
    u = prep.hash_fraction(0, f["sha256"])
    assert f["split_rule"] == "forced" or (f["split"] == "train") == (u < 0.5)


def test_no_temp_files_and_shards_complete(prepared):
  out, man = prepared
  names = {p.name for p in out.iterdir()}
  assert not [n for n in names if shards_lib.is_temp_file(n) or n.endswith(".tmp")]
  listed = {s["file"] for lst in man["shards"].values() for s in lst}
  assert names == listed | {"manifest.json"}
  for n in listed:
    assert prep._SHARD_RE.match(n)


def test_shard_patches_equal_the_pair(folder, prepared):
  """Stored patches are the pair's pixels (up to float16) at the recorded positions."""
  out, man = prepared
  f = next(f for f in man["files"] if f["status"] == "ok")
  r = prep.pair_patches(folder["raw"] / f["path"], "invisp", PATCH, PATCH)
  exs = [e for e in _all_examples(out, man, f["split"]) if e["file_id"] == f["path"]]
  assert len(exs) == len(r["pos"]) == f["n_patches"]
  pos = [tuple(p) for p in r["pos"]]
  for e in exs:
    k = pos.index(tuple(e["pos"]))
    np.testing.assert_allclose(e["raw"], r["raw"][k], atol=2e-3)  # float16 rounding
    np.testing.assert_allclose(e["rgb"], r["rgb"][k], atol=2e-3)
    assert e["camera"] == f["camera"]
  # no two examples share a position: every patch stored exactly once
  assert len({tuple(e["pos"]) for e in exs}) == len(exs)


def test_rerun_is_noop_and_cli_semantics(folder, prepared, capsys):
  out, man = prepared
  before = _snapshot(out)
  again = prep.prepare(folder["raw"], out, patch=PATCH, stride=PATCH, split=0.5, shards=2,
                       workers=2, progress=False)
  assert again == man
  assert _snapshot(out) == before  # nothing rewritten, not even the manifest

  parser = prep.add_prepare_args(argparse.ArgumentParser())
  args = parser.parse_args(["--raw-dir", str(folder["raw"]), "--out", str(out), "--patch",
                            str(PATCH), "--stride", str(PATCH), "--split", "0.5",
                            "--shards", "2", "--no-progress"])
  assert prep.run_prepare(args) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == f"skipped: {len(folder['bad'])}"
  assert any(str(out / "manifest.json") in l for l in lines[:-1])
  assert _snapshot(out) == before

  # different settings on the same folder: refused, not mixed
  with pytest.raises(ValueError, match="patch"):
    prep.prepare(folder["raw"], out, patch=16, stride=16, split=0.5, workers=1,
                 progress=False)


def test_cli_exit_1_when_nothing_prepares(folder, tmp_path, capsys):
  bad = tmp_path / "bad"
  bad.mkdir()
  for n in folder["bad"]:
    shutil.copy(folder["raw"] / n, bad / n)
  parser = prep.add_prepare_args(argparse.ArgumentParser())
  args = parser.parse_args(["--raw-dir", str(bad), "--out", str(tmp_path / "o"),
                            "--workers", "1", "--no-progress"])
  assert prep.run_prepare(args) == 1
  assert capsys.readouterr().out.strip().splitlines()[-1] == f"skipped: {len(folder['bad'])}"
  assert not list((tmp_path / "o").glob("*.tfrecord"))
  args = parser.parse_args(["--raw-dir", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "o2"), "--no-progress"])
  assert prep.run_prepare(args) == 2
  assert "missing" in capsys.readouterr().err


def test_grown_folder_adds_only_new_files(folder, prepared, tmp_path):
  out0, man0 = prepared
  out = tmp_path / "out"
  shutil.copytree(out0, out)
  raw = tmp_path / "raw"
  shutil.copytree(folder["raw"], raw)
  before = _snapshot(out)
  shutil.copy(folder["extra"], raw / folder["extra"].name)
  shutil.copy(raw / folder["good"][0], raw / "copy_of_first.dng")  # same bytes, new name
  man = prep.prepare(raw, out, patch=PATCH, stride=PATCH, split=0.5, shards=2, workers=1,
                     progress=False)
  after = _snapshot(out)
  for name, stat in before.items():
    if name != "manifest.json":
      assert after[name] == stat  # old shards untouched
  new = set(after) - set(before)
  assert new and all("-b0001-" in n for n in new)
  by_path = {f["path"]: f for f in man["files"]}
  assert by_path[folder["extra"].name]["status"] == "ok"
  assert set(by_path[folder["extra"].name]["shards"]) <= new
  dup = by_path["copy_of_first.dng"]
  assert dup["status"] == "skipped" and "duplicate" in dup["reason"]
  # every earlier entry is unchanged (same split, same shards)
  for f in man0["files"]:
    assert by_path[f["path"]] == f
  assert man["n_ok"] == GOOD + 1 and len(man["batches"]) == 2
  new_patches = sum(s["n"] for lst in man["shards"].values() for s in lst if s["file"] in new)
  assert new_patches == by_path[folder["extra"].name]["n_patches"]


def test_split_list(folder, tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  for n in folder["good"][:3]:
    shutil.copy(folder["raw"] / n, raw / n)
  a, b, c = folder["good"][:3]
  lst = tmp_path / "split.txt"
  # names may be given with or without extension
  lst.write_text(f"# comment\ntrain {a}\ntest {os.path.splitext(b)[0]}\n")
  man = prep.prepare(raw, tmp_path / "out", patch=PATCH, stride=64, shards=1, workers=1,
                     split_list=lst, progress=False)
  by_path = {f["path"]: f for f in man["files"]}
  assert by_path[a]["split"] == "train" and by_path[b]["split"] == "test"
  assert by_path[c]["status"] == "skipped" and "split list" in by_path[c]["reason"]
  assert man["counts"]["train"]["patches"] == 4 and man["counts"]["test"]["patches"] == 4


def test_every_real_file_prepares(raw_dir, tmp_path):
  """JISP_RAW_DIR: every real camera file becomes ok pairs (one run, sparse patch grid)."""
  man = prep.prepare(raw_dir, tmp_path / "out", patch=64, stride=640, split=0.5, shards=1,
                     workers=2, progress=False)
  files = prep.list_raw_files(raw_dir)
  assert files
  bad = [f for f in man["files"] if f["status"] != "ok"]
  assert not bad, bad
  assert man["n_ok"] == len(files)
  assert all(f["n_patches"] > 0 for f in man["files"])
  patterns = {man["cameras"][f["camera"]]["pattern"] for f in man["files"]}
  assert patterns <= {"RGGB", "BGGR", "GRBG", "GBRG"}


def test_shipped_fivek_split_lists_by_name():
  from collections import Counter
  nikon = prep.read_split_list("fivek:nikon_d700")
  canon = prep.read_split_list("fivek:canon_eos_5d")
  assert Counter(canon.values()) == {"train": 650, "test": 127}
  # 414/73 ids plus the bare form of the one id published with " (original)"
  assert Counter(nikon.values())["test"] + Counter(nikon.values())["train"] == 414 + 73 + 1
  with pytest.raises(ValueError, match="fivek:sony"):
    prep.read_split_list("fivek:sony")
