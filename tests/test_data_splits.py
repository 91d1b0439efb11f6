"""The small-folder split rule is decided among the files that DECODED (issue 15, item 1)."""
import itertools
import shutil

import numpy as np
import pytest

from jisp.data import prepare as prep

PATCH = 32


def _reference(cands, ok, existing, split):
  """The rule stated independently: hash sides, then, if a side is empty while the folder
  holds >= 2 files, the decoded file of the other side nearest the boundary moves over."""
  good = [c for c in cands if ok[c.rel]]
  side = {c.rel: c.side for c in good}
  total = sum(existing.values())
  if 0 < split < 1 and len(good) + total >= 2:
    for s, pick in (("test", max), ("train", min)):
      if existing.get(s, 0) + sum(v == s for v in side.values()) == 0:
        others = [c for c in good if side[c.rel] != s]
        if others and len(others) + total >= 2:
          side[pick(others, key=lambda c: c.u).rel] = s
  return side


def _cands(us, split):
  out = []
  for i, u in enumerate(us):
    c = prep._Cand(None, f"f{i}", f"sha{i}", None)
    c.u, c.side, c.rule, c.movable = u, ("train" if u < split else "test"), "hash", True
    out.append(c)
  return out


def test_resolver_matches_the_rule_on_every_small_case():
  """Exhaustive over up to 4 files x decode outcomes x earlier files: the streaming
  resolver (at most one waiting file per side) decides exactly what the rule says."""
  rng = np.random.default_rng(0)
  n_cases = 0
  for n in range(5):
    for outcome in itertools.product([True, False], repeat=n):
      for existing in ({}, {"train": 1}, {"test": 1}, {"train": 2, "test": 1}):
        for split in (0.5, 0.85):
          cands = _cands(rng.uniform(size=n), split)
          ok = {c.rel: o for c, o in zip(cands, outcome)}
          want = _reference(cands, ok, existing, split)
          res = prep._SplitResolver(cands, existing, forcing=True)
          got = {}
          for c in res.order(cands):
            for d, sp, rule in res.add(c, ok[c.rel]):
              assert d.rel not in got
              got[d.rel] = sp
              assert (rule == "forced") == (sp != d.side)
            assert len(res.held) <= 2
          for d, sp, _ in res.finish():
            assert d.rel not in got
            got[d.rel] = sp
          assert got == want, (outcome, existing, split)
          n_cases += 1
  assert n_cases == 2 * 4 * sum(2 ** n for n in range(5))


@pytest.fixture(scope="module")
def three_good(tmp_path_factory):
  from jisp.data import virtual_camera
  return virtual_camera.write_virtual_raw_dir(tmp_path_factory.mktemp("g") / "raw", 3,
                                              seed=4, size=64)


def test_a_bad_file_cannot_take_the_test_slot(three_good, tmp_path):
  """3 good files + a truncated copy, with a seed for which every file hashes to train
  and the bad one is nearest the boundary: the old rule (decided before decoding) gave it
  the test slot, leaving no test split at all."""
  raw = tmp_path / "raw"
  raw.mkdir()
  for p in three_good:
    shutil.copy(p, raw / p.name)
  (raw / "zz_truncated.dng").write_bytes(three_good[0].read_bytes()[:3000])
  shas = {p.name: prep.sha256_file(p) for p in raw.iterdir()}
  split = 0.95
  seed = next(s for s in range(1000)
              if all(prep.hash_fraction(s, h) < split for h in shas.values())
              and max(shas, key=lambda n: prep.hash_fraction(s, shas[n])) == "zz_truncated.dng")
  man = prep.prepare(raw, tmp_path / "out", patch=PATCH, stride=PATCH, split=split,
                     seed=seed, shards=1, workers=1, progress=False)
  by_path = {f["path"]: f for f in man["files"]}
  assert by_path["zz_truncated.dng"]["status"] == "skipped"
  test = [f for f in man["files"] if f["status"] == "ok" and f["split"] == "test"]
  assert len(test) == 1 and test[0]["split_rule"] == "forced"
  # the good file nearest the boundary went, the others stayed on their hash side
  good = [p.name for p in three_good]
  assert test[0]["path"] == max(good, key=lambda n: prep.hash_fraction(seed, shas[n]))
  assert man["counts"]["test"]["files"] == 1 and man["counts"]["train"]["files"] == 2
  assert sum(s["n"] for s in man["shards"]["test"]) == test[0]["n_patches"] > 0
