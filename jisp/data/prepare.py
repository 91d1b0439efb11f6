"""`jisp prepare`: a folder of camera RAW files -> TFRecord patch shards + manifest.json.

Layout of OUT after a run:

  manifest.json                               what is in the folder (written atomically)
  <split>-b<batch>-<k>-of-<n>.tfrecord        patch shards (jisp.data.shards format)

Every run that finds new files adds one *batch* of shards (b0000, b0001, ...), so a grown
folder never rewrites earlier shards, and a run that finds nothing new writes nothing.
Files are recognised by sha256: re-running on the same input is a no-op, and a file whose
content already appears (under any name) is skipped as a duplicate.

A run is four steps: `scan` the RAW folder (what is new, what cannot be read), `verify`
the shards already listed (size + sha256; a deleted, truncated or corrupted shard's
batch/split is rebuilt from its RAW files, which keep their split), write one batch
(decode in workers, assign splits, write shards) and update the manifest. Nothing listed
in the old manifest is touched until the new one is in place, so a failed run (a bad
folder, a full disk) leaves the previous dataset as it was.

Split is by file, never by patch (patches of one photo are correlated): either from a split
list, or from a hash of (seed, sha256) so that a file's split never depends on which other
files are in the folder. Hashing the content rather than the name keeps identical photos
under two names in the same split. A small folder still gets a test (and a train) file:
if one side would end up empty, the file nearest the boundary among those that DECODED
moves over (rule "forced"); see `_SplitResolver`.

Heavy work (LibRaw decode + render + pair protocol) runs in worker processes; the parent
only writes shards, in a fixed order, so the output is the same for any number of workers.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import sys
from collections import deque

import numpy as np

from jisp.core.camera import PROTOCOLS as PROTOCOL_NAMES
from jisp.core.errors import DataError, OptionError, UserError
from jisp.core.fileio import atomic_write_json
from jisp.core.fileio import load_manifest as _read_manifest
from jisp.data import shards as shards_lib

MANIFEST = shards_lib.MANIFEST
MANIFEST_VERSION = shards_lib.MANIFEST_VERSION

# Extensions LibRaw decodes (lower case). Other files in the folder are ignored, so a
# README or a sidecar JPEG next to the RAWs is not reported as a broken RAW.
RAW_EXTENSIONS = frozenset(
    ".3fr .ari .arw .bay .cap .cr2 .cr3 .crw .dcr .dcs .dng .erf .fff .gpr .iiq .k25 .kdc "
    ".mdc .mef .mos .mrw .nef .nrw .orf .pef .ptx .pxn .r3d .raf .raw .rw2 .rwl .rwz .sr2 "
    ".srf .srw .sti .x3f".split())

_SHARD_RE = re.compile(r"^([a-z]+)-b(\d{4,})-(\d{5})-of-(\d{5})\.tfrecord$")
_SPLIT_NAME_RE = re.compile(r"^[a-z]+$")
SIDES = ("train", "test")


# --------------------------------------------------------------------------- small helpers

def sha256_file(path, chunk=1 << 20):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def hash_fraction(seed, sha):
  """Deterministic u in [0, 1) for a file: its split is train iff u < split."""
  d = hashlib.sha256(f"{int(seed)}:{sha}".encode()).hexdigest()
  return int(d[:16], 16) / float(1 << 64)


def shard_name(split, batch, k, n):
  return f"{split}-b{batch:04d}-{k:05d}-of-{n:05d}.tfrecord"


def _jsonable(x):
  """numpy scalars/arrays, tuples, paths -> plain JSON types."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, pathlib.PurePath):
    return str(x)
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  return str(x)


def load_manifest(out_dir):
  """The manifest of a prepared folder, or None if there is none (DataError if broken)."""
  if not (pathlib.Path(out_dir) / MANIFEST).exists():
    return None
  return _read_manifest(out_dir)


def read_split_list(path):
  """{name: split} from a split list file.

  Accepted formats: JSON {"train": [names], "test": [names], ...}, or text lines
  "<split> <name>" (name may contain spaces; '#' starts a comment). A name matches a file
  by relative path, file name or file stem.
  """
  if str(path).startswith("fivek:"):
    return _fivek_split_list(str(path)[len("fivek:"):])
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except OSError as e:
    raise OptionError(f"--split-list {path}: cannot read ({e.strerror or e})") from None
  out = {}
  if text.lstrip().startswith("{"):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise OptionError(f"{path}: split list is not valid JSON ({e})") from None
    items = [(s, n) for s, names in data.items() for n in names]
  else:
    items = []
    for i, line in enumerate(text.splitlines(), 1):
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      parts = line.split(None, 1)
      if len(parts) != 2:
        raise OptionError(f"{path}:{i}: expected '<split> <name>', got {line!r}")
      items.append((parts[0], parts[1].strip()))
  for split, name in items:
    if not _SPLIT_NAME_RE.match(split):
      raise OptionError(f"{path}: split name {split!r} must be lower-case letters")
    if out.get(name, split) != split:
      raise OptionError(f"{path}: {name!r} is listed in both {out[name]!r} and {split!r}")
    out[name] = split
  return out


FIVEK_LISTS = {"nikon_d700": "NIKON_D700", "canon_eos_5d": "Canon_EOS_5D"}


def _fivek_split_list(camera):
  """The official InvISP FiveK split shipped in jisp/data/splits (`--split-list fivek:CAMERA`)."""
  if camera not in FIVEK_LISTS:
    raise OptionError(f"--split-list fivek:{camera}: unknown camera (known: "
                      f"{', '.join('fivek:' + c for c in FIVEK_LISTS)})")
  here = pathlib.Path(__file__).with_name("splits")
  out = {}
  for split in ("train", "test"):
    for line in (here / f"{FIVEK_LISTS[camera]}_{split}.txt").read_text().splitlines():
      name = line.strip()
      if name:
        out[name] = split
        # One Nikon id is published with a " (original)" suffix; match the bare name too.
        if name.endswith(" (original)"):
          out[name[: -len(" (original)")]] = split
  return out


def list_raw_files(raw_dir, exclude=None):
  """Sorted RAW files under raw_dir (recursive; hidden files/dirs and `exclude` skipped)."""
  raw_dir = pathlib.Path(raw_dir)
  exclude = pathlib.Path(exclude).resolve() if exclude else None
  out = []
  for p in raw_dir.rglob("*"):
    rel = p.relative_to(raw_dir)
    if any(part.startswith(".") for part in rel.parts):
      continue
    if exclude is not None and (p.resolve() == exclude or exclude in p.resolve().parents):
      continue
    if p.is_file() and p.suffix.lower() in RAW_EXTENSIONS:
      out.append(p)
  return sorted(out, key=lambda p: p.relative_to(raw_dir).as_posix())


def patch_positions(h, w, patch, stride):
  """Top-left (y, x) of every full patch on a stride grid, row-major."""
  return [(y, x) for y in range(0, h - patch + 1, stride)
          for x in range(0, w - patch + 1, stride)]


def capture_profile(cap):
  """What a camera's DNGs need later (pattern, levels, wb, colour matrix ...)."""
  cm = getattr(cap, "color_matrix", None)
  return _jsonable({
      "pattern": cap.pattern,
      "black_level": np.asarray(cap.black_level, np.float64).reshape(-1),
      "white_level": float(cap.white_level),
      "wb": np.asarray(cap.wb, np.float64).reshape(-1),
      "wb_source": getattr(cap, "wb_source", None),
      "color_matrix": None if cm is None else np.asarray(cm, np.float64),
      "rgb_cam": getattr(cap, "rgb_cam", None),
      "bits": int(getattr(cap, "bits", 0)),
      "orientation": int(getattr(cap, "orientation", 1)),
  })


def pair_patches(path, protocol, patch, stride):
  """Read one RAW file and cut its (raw, rgb) pair into aligned patches.

  Returns dict(camera, profile, meta, raw (N,P,P,C) float32, rgb (N,P,P,3) float32,
  pos [(y, x)]). Raises RawFormatError / ValueError for a file that cannot be paired.
  Shared by `prepare` and the TFDS builder so both cut identical patches.
  """
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(path)
  srgb = raw_io.render_srgb(cap)
  pair = pairs.make_pair(cap, srgb, protocol)
  raw, rgb = np.asarray(pair["raw"], np.float32), np.asarray(pair["rgb"], np.float32)
  if raw.shape[:2] != rgb.shape[:2]:
    raise ValueError(f"{path}: pair is not aligned: raw {raw.shape} vs rgb {rgb.shape}")
  pos = patch_positions(raw.shape[0], raw.shape[1], patch, stride)
  if pos:
    raw_p = np.stack([raw[y:y + patch, x:x + patch] for y, x in pos])
    rgb_p = np.stack([rgb[y:y + patch, x:x + patch] for y, x in pos])
  else:
    raw_p = np.zeros((0, patch, patch, raw.shape[2]), np.float32)
    rgb_p = np.zeros((0, patch, patch, rgb.shape[2]), np.float32)
  return {"camera": cap.camera, "profile": capture_profile(cap),
          "meta": _jsonable(pair.get("meta", {})), "raw": raw_p, "rgb": rgb_p,
          "pos": pos, "size": list(raw.shape)}


def _stat_fields(st):
  return {} if st is None else {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _to_storage(x, encoding):
  # Done in the worker so half as many bytes cross the process boundary.
  if encoding == "float16":
    return x.astype(np.float16)
  if x.size and (x.min() < 0.0 or x.max() > 1.0):
    raise ValueError(f"uint16 encoding needs values in [0, 1], got [{x.min():g}, {x.max():g}]")
  return np.round(x * 65535.0).astype(np.uint16)


def _one_line(e, path):
  msg = " ".join(str(e).split())
  if str(path) not in msg:
    msg = f"{path}: {type(e).__name__}: {msg}"
  return msg


def _process_file(path, protocol, patch, stride, encoding):
  """Worker: one file -> patches in storage dtype, or a skip reason (never raises)."""
  try:
    r = pair_patches(path, protocol, patch, stride)
    if not r["pos"]:
      h, w = r["size"][:2]
      return {"status": "skipped",
              "reason": f"{path}: pair is {w}x{h}, smaller than one {patch}x{patch} patch"}
    r["raw"] = _to_storage(r["raw"], encoding)
    r["rgb"] = _to_storage(r["rgb"], encoding)
    r["status"] = "ok"
    return r
  except Exception as e:  # a bad file must not stop the others; the reason is recorded
    return {"status": "skipped", "reason": _one_line(e, path)}


def _skipped(rel, sha, reason, st, **kw):
  return {"path": rel, "sha256": sha, "status": "skipped", "reason": reason,
          **_stat_fields(st), **kw}


# --------------------------------------------------------------------------- 1. scan

class _Cand:
  """A RAW file to decode in this run."""

  def __init__(self, path, rel, sha, st):
    self.path, self.rel, self.sha, self.st = path, rel, sha, st
    self.side = None        # split it gets by its rule (before the small-folder rule)
    self.rule = None        # "hash", "list", or a rebuilt file's recorded rule
    self.movable = False    # may the small-folder rule move it to the other side?
    self.u = 0.0


def find_raw_files(raw_dir, out_dir=None):
  """`list_raw_files`, or DataError when the folder is missing or holds no RAW file."""
  if not pathlib.Path(raw_dir).is_dir():
    raise DataError(f"{raw_dir}: raw folder does not exist or is not a directory")
  files = list_raw_files(raw_dir, exclude=out_dir)
  if not files:
    raise DataError(f"no RAW files found in {raw_dir} (searched recursively for camera RAW "
                    "extensions such as .dng .nef .cr2 .arw .raf)")
  return files


def scan(files, raw_dir, old_files, rebuild=None, log=None):
  """What this run must do with the RAW `files` of raw_dir, given the manifest's
  `old_files`.

  Returns (new_entries, cands, dropped): skipped entries to add (duplicates, unreadable
  files), `_Cand`s to decode, and paths whose old entry is replaced. `rebuild`
  ({sha256: path}, files whose shards are broken, already taken out of `old_files`) are
  decoded again. A file that cannot be read (permission denied, I/O error) is skipped
  with its reason and tried again on the next run.
  """
  log = log or (lambda line: None)
  rebuild = dict(rebuild or {})
  by_path = {f["path"]: f for f in old_files}
  known = {}
  for f in old_files:
    if f.get("sha256") and f["sha256"] not in rebuild:
      known.setdefault(f["sha256"], f)
  # Hashing a big folder on every run is the slow part of a no-op: reuse the recorded
  # sha256 of a file whose path, size and mtime are unchanged (as make/rsync do).
  by_stat = {(f["path"], f.get("bytes"), f.get("mtime_ns")): f["sha256"]
             for f in old_files if f.get("sha256")}
  new_entries, cands, dropped, seen = [], [], set(), {}
  for p in files:
    rel = p.relative_to(raw_dir).as_posix()
    old = by_path.get(rel)
    st = None
    try:
      st = p.stat()
      sha = by_stat.get((rel, st.st_size, st.st_mtime_ns)) or sha256_file(p)
    except OSError as e:
      if old is not None and old.get("sha256"):
        continue  # judged before from its content; its shards (if any) stand
      reason = f"{p}: cannot read ({e.strerror or e})"
      if old is not None and old.get("reason") == reason:
        continue  # the same failure as last time: nothing to record
      if old is not None:
        dropped.add(rel)
      new_entries.append(_skipped(rel, None, reason, st))
      continue
    if old is not None and old.get("sha256") is None:
      dropped.add(rel)  # unreadable last time, readable now: judged afresh
      old = None
    if sha in rebuild and rebuild[sha] != rel:
      if old is None:
        new_entries.append(_skipped(rel, sha, f"{p}: duplicate of {rebuild[sha]} (same "
                                    "sha256, already in the manifest)", st))
      continue
    if sha in known:
      if old is None:  # same bytes under a new name: record, never re-use
        new_entries.append(_skipped(rel, sha, f"{p}: duplicate of {known[sha]['path']} "
                                    "(same sha256, already in the manifest)", st))
      continue  # prepared (or judged bad) before: the no-op path
    if sha in seen:
      if old is not None:
        dropped.add(rel)
      new_entries.append(_skipped(rel, sha, f"{p}: duplicate of {seen[sha]} (same sha256)",
                                  st))
      continue
    if old is not None and old["status"] == "ok":
      # Its earlier version's patches are in the shards; two versions under one name
      # would be indistinguishable there.
      log(f"{p}: changed since it was prepared (another sha256); the prepared version "
          "stays, prepare into a new folder to use the new one")
      continue
    seen[sha] = rel
    if old is not None:
      dropped.add(rel)  # a bad file replaced by new content: judged afresh
    cands.append(_Cand(p, rel, sha, st))
  return new_entries, cands, dropped


# --------------------------------------------------------------------------- 2. verify

def _batch_of(name):
  m = _SHARD_RE.match(name)
  return int(m.group(2)) if m else None


def broken_groups(out_dir, man, full=True):
  """{(batch, split): {shard name: problem}} for the listed shards that are not intact."""
  out = {}
  for split, lst in man.get("shards", {}).items():
    for name, problem in shards_lib.verify_shards(out_dir, lst, full=full).items():
      out.setdefault((_batch_of(name), split), {})[name] = problem
  return out


def plan_rebuild(man, groups, raw_dir):
  """Drops the broken (batch, split) groups from `man` (in place); returns
  ({path: (split, rule)} of the files to decode again, shard names dropped).

  A shard holds patches of many files and each file's patches are spread over the
  shards of its batch and split, so the whole group is rebuilt from its RAW files.
  Raises DataError (nothing changed) when one of them is no longer in raw_dir.
  """
  fixed, dropped = {}, []
  for (batch, split), problems in sorted(groups.items()):
    group = {s["file"] for s in man["shards"][split] if _batch_of(s["file"]) == batch}
    files = [f for f in man["files"] if f["status"] == "ok" and f.get("split") == split
             and set(f.get("shards", [])) & group]
    first = problems[sorted(problems)[0]]
    for f in files:
      src = pathlib.Path(raw_dir) / f["path"]
      why = None
      if not src.is_file():
        why = f"which is no longer in {raw_dir}"
      else:
        try:
          st = src.stat()
          same = (st.st_size, st.st_mtime_ns) == (f.get("bytes"), f.get("mtime_ns")) \
              or sha256_file(src) == f["sha256"]
        except OSError as e:
          same, why = False, f"which cannot be read ({e.strerror or e})"
        if not same and why is None:
          why = "which has changed since it was prepared"
      if why:
        raise DataError(f"{first}; it holds patches of {f['path']}, {why}: restore that "
                        "file and re-run, or prepare into a new folder")
      fixed[f["path"]] = (split, f.get("split_rule") or "hash")
    man["shards"][split] = [s for s in man["shards"][split] if s["file"] not in group]
    for b in man["batches"]:
      if split in b.get("shards", {}):
        b["shards"][split] = [n for n in b["shards"][split] if n not in group]
    dropped += sorted(group)
  man["files"] = [f for f in man["files"] if f["path"] not in fixed]
  return fixed, dropped


# --------------------------------------------------------------------------- 3. splits

class _SplitResolver:
  """Final split of each decoded file, as if decided after the whole batch was decoded.

  The rule (among the files that decoded, never among candidates, so a bad file cannot
  take the test slot): every file keeps the side of its rule, except that when, counting
  the folder's earlier files, one side has no file at all while the folder holds at least
  two, the movable file of the other side nearest the boundary moves over ("forced").

  Files are fed in `order()`: fixed files, then the two sides interleaved, each side
  nearest-to-the-boundary first. The first success of a side is then exactly the file
  that would move, so at most that one file per side waits in `held` until the other
  side's fate is known; every other file is decided (and written) at once.
  """

  def __init__(self, cands, existing_ok, forcing):
    self.forcing = forcing
    self.existing = {s: int(existing_ok.get(s, 0)) for s in SIDES}
    self.n_ok = sum(existing_ok.values())
    self.native_ok = dict(self.existing)
    self.left = {s: sum(1 for c in cands if c.movable and c.side == s) for s in SIDES}
    self.held = {}
    self.seen = set()   # sides whose first movable success has been fed

  @staticmethod
  def order(cands):
    fixed = [c for c in cands if not c.movable]
    test = sorted((c for c in cands if c.movable and c.side == "test"), key=lambda c: c.u)
    train = sorted((c for c in cands if c.movable and c.side == "train"),
                   key=lambda c: -c.u)
    mixed = [c for pair in zip(test, train) for c in pair]
    n = min(len(test), len(train))
    return fixed + mixed + test[n:] + train[n:]

  def add(self, cand, ok):
    """Feeds one result; returns [(cand, split, rule)] decided now."""
    if cand.movable:
      self.left[cand.side] -= 1
    if not ok:
      return self._resolve()
    self.n_ok += 1
    self.native_ok[cand.side] = self.native_ok.get(cand.side, 0) + 1
    if self.forcing and cand.movable and cand.side not in self.seen:
      self.seen.add(cand.side)
      self.held[cand.side] = cand
      return self._resolve()
    return [(cand, cand.side, cand.rule)] + self._resolve()

  def _resolve(self, final=False):
    out = []
    for side, other in (("test", "train"), ("train", "test")):
      c = self.held.get(side)
      if c is None:
        continue
      if self.native_ok[other] > 0:
        out.append((self.held.pop(side), side, c.rule))
      elif self.left[other] == 0 and self.n_ok >= 2:
        self.native_ok[other] += 1
        self.native_ok[side] -= 1
        out.append((self.held.pop(side), other, "forced"))
      elif final:
        out.append((self.held.pop(side), side, c.rule))
    return out

  def finish(self):
    return self._resolve(final=True)


def assign_rules(cands, split, seed, split_map, fixed, split_list=None):
  """Sets each candidate's side/rule; returns skip entries for files not in the list."""
  skipped, keep = [], []
  for c in cands:
    if c.rel in fixed:
      c.side, c.rule = fixed[c.rel]
    elif split_map is not None:
      pp = pathlib.PurePosixPath(c.rel)
      s = split_map.get(c.rel, split_map.get(pp.name, split_map.get(pp.stem)))
      if not s:
        skipped.append(_skipped(c.rel, c.sha, f"{c.path}: not in the split list "
                                f"{split_list}", c.st))
        continue
      c.side, c.rule = s, "list"
    else:
      c.u = hash_fraction(seed, c.sha)
      c.side, c.rule = ("train" if c.u < split else "test"), "hash"
      c.movable = True
    keep.append(c)
  cands[:] = keep
  return skipped


# --------------------------------------------------------------------------- 4. write

class _BatchWriter:
  """Round-robin shard writers of one batch; all temp until `commit`."""

  def __init__(self, out_dir, batch, n_shards, encoding):
    self.out_dir, self.batch, self.n_shards, self.encoding = out_dir, batch, n_shards, encoding
    self.writers = {}   # split -> [ShardWriter]
    self.counter = {}   # split -> patches written

  def add(self, split, raw, rgb, file_id, camera, pos):
    """Writes one file's patches; returns the set of shard indices it touched."""
    ws = self.writers.setdefault(split, [])
    touched = set()
    for i in range(len(pos)):
      k = self.counter.get(split, 0) % self.n_shards
      self.counter[split] = self.counter.get(split, 0) + 1
      if k == len(ws):
        # The final name (which needs the shard count) is set at commit time.
        ws.append(shards_lib.ShardWriter(self.out_dir / f"{split}-pending-{k}",
                                         encoding=self.encoding))
      ws[k].write(raw[i], rgb[i], file_id=file_id, camera=camera, pos=pos[i])
      touched.add(k)
    return touched

  def commit(self):
    """Close every temp file first, then rename: a failure leaves no final shard half-made.

    Returns {split: [manifest shard entry]}. Round robin fills shards 0..n-1 in order, so
    the shards that exist are always a prefix and are named k-of-n with n = how many exist.
    """
    for ws in self.writers.values():
      for w in ws:
        w.close_temp()
    entries = {split: [shards_lib.file_digest(w.tmp_path) for w in ws]
               for split, ws in self.writers.items()}
    out = {}
    for split, ws in self.writers.items():
      n = len(ws)
      out[split] = []
      for k, w in enumerate(ws):
        w.path = self.out_dir / shard_name(split, self.batch, k, n)
        out[split].append({"file": w.path.name, "n": w.count, **entries[split][k]})
    for ws in self.writers.values():
      for w in ws:
        w.commit()
    return out

  def abort(self):
    for ws in self.writers.values():
      for w in ws:
        with contextlib.suppress(Exception):
          w.abort()


def write_batch(cands, resolver, writer, *, protocol, patch, stride, encoding, workers,
                progress):
  """Decodes `cands` (in the resolver's order) and writes each as soon as its split is
  known; returns the manifest entries of the batch (decoded or skipped)."""
  from tqdm import tqdm
  order = resolver.order(cands)
  entries, results = {}, {}
  bar = tqdm(total=len(order), desc="prepare", unit="file", disable=not progress,
             file=sys.stderr)

  def record(decided):
    for c, sp, rule in decided:
      r = results.pop(c.rel)
      ks = writer.add(sp, r["raw"], r["rgb"], c.rel, r["camera"], r["pos"])
      entries[c.rel].update(split=sp, split_rule=rule, shard_index=sorted(ks))

  with _pool(workers) as ex:
    args = [(str(c.path), protocol, patch, stride, encoding) for c in order]
    stream = ((_process_file(*a) for a in args) if ex is None
              else _ordered_map(ex, _process_file, args, 2 * workers))
    for c, r in zip(order, stream):
      ok = r["status"] == "ok"
      e = {"path": c.rel, "sha256": c.sha, "status": r["status"], "reason": r.get("reason"),
           "split": None, "split_rule": None, **_stat_fields(c.st)}
      if ok:
        prof = r["profile"]
        e.update(camera=r["camera"], n_patches=len(r["pos"]), size=r["size"], meta=r["meta"],
                 wb=prof["wb"], wb_source=prof["wb_source"], orientation=prof["orientation"],
                 _profile=prof, _shapes=(list(r["raw"].shape[1:]), list(r["rgb"].shape[1:])))
        results[c.rel] = r
      entries[c.rel] = e
      record(resolver.add(c, ok))
      bar.update(1)
    record(resolver.finish())
  bar.close()
  return [entries[c.rel] for c in order]


def update_manifest(man, entries, new_entries, committed, batch, n_todo):
  """Adds one written batch (and the run's skip entries) to `man`, in place."""
  names = {sp: [s["file"] for s in lst] for sp, lst in committed.items()}
  for e in entries:
    prof, shapes = e.pop("_profile", None), e.pop("_shapes", None)
    if e["status"] != "ok":
      e.pop("shard_index", None)
      continue
    e["shards"] = [names[e["split"]][k] for k in e.pop("shard_index")]
    cam = man["cameras"].setdefault(e["camera"], dict(prof))
    if "target_gains" in e["meta"]:
      cam.setdefault("target_gains", e["meta"]["target_gains"])
    man.setdefault("raw_shape", shapes[0])
    man.setdefault("rgb_shape", shapes[1])
  if n_todo:
    man["batches"].append({"id": f"b{batch:04d}",
                           "files": sum(e["status"] == "ok" for e in entries),
                           "shards": names})
  for sp, lst in committed.items():
    man["shards"].setdefault(sp, []).extend(lst)
  man["files"].extend(new_entries + entries)
  man["files"].sort(key=lambda f: f["path"])
  return _summarise(man)


def _summarise(man):
  """Recomputes counts/cameras/shard lists from the per-file entries."""
  counts = {}
  cameras = man.setdefault("cameras", {})
  for cam in cameras.values():
    cam["files"], cam["patches"] = 0, {}
  for f in man["files"]:
    if f["status"] != "ok":
      continue
    c = counts.setdefault(f["split"], {"files": 0, "patches": 0, "cameras": {}})
    c["files"] += 1
    c["patches"] += f["n_patches"]
    cc = c["cameras"].setdefault(f["camera"], {"files": 0, "patches": 0})
    cc["files"] += 1
    cc["patches"] += f["n_patches"]
    cam = cameras[f["camera"]]
    cam["files"] += 1
    cam["patches"][f["split"]] = cam["patches"].get(f["split"], 0) + f["n_patches"]
  man["counts"] = counts
  man["n_ok"] = sum(f["status"] == "ok" for f in man["files"])
  man["n_skipped"] = sum(f["status"] != "ok" for f in man["files"])
  return man


# --------------------------------------------------------------------------- prepare

def _check_same_settings(old, new, mpath):
  for key in ("protocol", "patch", "stride", "encoding", "split", "seed"):
    if old.get(key) != new[key]:
      raise OptionError(f"{mpath}: folder was prepared with {key}={old.get(key)!r}, not "
                        f"{new[key]!r}; use a new --out folder")


def _clean_stale(out_dir, manifest):
  """Removes temp files and shards a crashed run left behind (not listed in the manifest)."""
  listed = set()
  for m in (manifest or {}).get("shards", {}).values():
    listed.update(s["file"] for s in m)
  for p in out_dir.iterdir():
    if p.is_file() and (shards_lib.is_temp_file(p) or
                        (_SHARD_RE.match(p.name) and p.name not in listed) or
                        (p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp"))):
      p.unlink(missing_ok=True)


def _write_failure(e):
  """The reason of a failed write (disk full, read-only, ...) or None for other errors."""
  if isinstance(e, OSError):
    if e.errno == errno.ENOSPC:
      return "no space left on device"
    return e.strerror or str(e)
  try:
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, tf.errors.OpError):
      msg = " ".join(str(e.message).split())
      return "no space left on device" if "No space left" in msg else msg
  except AttributeError:
    pass
  return None


def _check_args(protocol, patch, stride, split, shards, workers, encoding):
  if protocol not in PROTOCOL_NAMES:
    raise OptionError(f"unknown protocol {protocol!r}; expected one of {PROTOCOL_NAMES}")
  if int(patch) < 2 or int(patch) % 2:
    raise OptionError(f"patch must be an even size >= 2, got {patch}")
  if int(stride) < 1:
    raise OptionError(f"stride must be >= 1, got {stride}")
  if not 0.0 <= float(split) <= 1.0:
    raise OptionError(f"split must be in [0, 1], got {split}")
  if int(shards) < 1 or int(workers) < 1:
    raise OptionError(f"shards and workers must be >= 1, got {shards}, {workers}")
  if encoding not in shards_lib.ENCODINGS:
    raise OptionError(f"encoding must be one of {shards_lib.ENCODINGS}, got {encoding!r}")


def _open_out(out_dir, settings):
  """The existing (checked) manifest of OUT, or None for a new folder."""
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") from None
  if not out_dir.is_dir():
    raise DataError(f"{out_dir}: output folder is an existing file, not a folder")
  man = load_manifest(out_dir)
  if man is None:
    return None
  shards_lib.check_manifest(man, out_dir)
  _check_same_settings(man, settings, out_dir / MANIFEST)
  return man


def prepare(raw_dir, out_dir, *, protocol="invisp", patch=64, stride=64, split=0.85,
            shards=4, workers=2, split_list=None, seed=0, progress=True,
            encoding="float16", verify="full", log=None):
  """Prepares (or extends, or repairs) OUT from the RAW files in raw_dir; returns the
  manifest dict.

  See the module docstring. A file that cannot be read or paired is recorded with
  status "skipped" and its one-line reason; it never stops the run. verify: "full"
  (size + sha256 of every listed shard) or "size". log: called with one line per repair.
  workers > 1 uses a spawn process pool: call it from code under an
  `if __name__ == "__main__":` guard. Bad options, folders or data raise UserError.
  """
  from jisp.data import pairs
  _check_args(protocol, patch, stride, split, shards, workers, encoding)
  if verify not in ("full", "size"):
    raise OptionError(f"verify must be 'full' or 'size', got {verify!r}")
  patch, stride, shards, workers = int(patch), int(stride), int(shards), int(workers)
  raw_dir, out_dir = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  log = log or (lambda line: None)
  files = find_raw_files(raw_dir, out_dir)
  split_map = read_split_list(split_list) if split_list else None
  settings = {"protocol": protocol, "patch": patch, "stride": stride, "encoding": encoding,
              "split": float(split), "seed": int(seed)}
  old = _open_out(out_dir, settings)
  _clean_stale(out_dir, old)

  man = json.loads(json.dumps(old)) if old is not None else {
      "version": MANIFEST_VERSION, **pairs.protocol_fields(protocol), **settings,
      "split_list": str(split_list) if split_list else None,
      "raw_dir": str(raw_dir.resolve()), "batches": [], "shards": {}, "cameras": {},
      "files": []}
  fixed, replaced = {}, []
  if old is not None:
    groups = broken_groups(out_dir, man, full=verify == "full")
    shas = {f["path"]: f["sha256"] for f in man["files"]}
    fixed, replaced = plan_rebuild(man, groups, raw_dir)
    rebuild = {shas[p]: p for p in fixed}
    for problems in groups.values():
      for line in problems.values():
        log(f"{line}: rebuilding it from its RAW files")
  else:
    rebuild = {}
  new_entries, cands, dropped = scan(files, raw_dir, man["files"], rebuild, log)
  if old is not None and not new_entries and not cands and not fixed:
    return old  # nothing new: nothing is rewritten
  man["files"] = [f for f in man["files"] if f["path"] not in dropped]
  new_entries += assign_rules(cands, float(split), seed, split_map, fixed, split_list)

  existing_ok = {}
  for f in man["files"]:
    if f["status"] == "ok":
      existing_ok[f["split"]] = existing_ok.get(f["split"], 0) + 1
  forcing = split_map is None and 0.0 < float(split) < 1.0
  resolver = _SplitResolver(cands, existing_ok, forcing)
  batch = len(man["batches"])
  writer = _BatchWriter(out_dir, batch, shards, encoding)
  try:
    entries = write_batch(cands, resolver, writer, protocol=protocol, patch=patch,
                          stride=stride, encoding=encoding, workers=workers,
                          progress=progress)
    committed = writer.commit()
    update_manifest(man, entries, new_entries, committed, batch, len(cands))
    atomic_write_json(out_dir / MANIFEST, _jsonable(man), indent=1)
  except BaseException as e:
    writer.abort()
    reason = _write_failure(e)
    if reason is None or isinstance(e, UserError):
      raise
    _clean_stale(out_dir, old)
    kept = ("the previous manifest and shards are intact" if old is not None
            else "no manifest was written")
    raise DataError(f"{out_dir}: cannot write the prepared data ({reason}); {kept}; free "
                    "space (or fix the folder) and re-run") from None
  for name in replaced:  # unlisted now; a crash before this is cleaned by the next run
    (out_dir / name).unlink(missing_ok=True)
  return man


def _ordered_map(ex, fn, arglist, window):
  """Like Executor.map, in order, but with at most `window` tasks in flight (bounded memory:
  each result holds a whole photo's patches)."""
  pending = deque()
  it = iter(arglist)
  for a in it:
    pending.append(ex.submit(fn, *a))
    if len(pending) >= window:
      break
  while pending:
    r = pending.popleft().result()
    for a in it:
      pending.append(ex.submit(fn, *a))
      break
    yield r


@contextlib.contextmanager
def _worker_env():
  """Environment the spawned workers inherit (they read it at interpreter start).

  Workers only do LibRaw/numpy work plus small CPU jnp ops: JAX stays off the accelerators
  (otherwise every worker would claim GPU memory), and each worker is single-threaded so
  `workers` processes do not oversubscribe the CPU.
  """
  want = {"JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
  saved = {k: os.environ.get(k) for k in want}
  os.environ.update(want)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@contextlib.contextmanager
def _pool(workers):
  if workers <= 1:
    yield None
    return
  # spawn, not fork: the parent may hold TensorFlow/JAX threads, which fork can deadlock.
  # (As with any spawn pool, a calling script needs an `if __name__ == "__main__":` guard.)
  ctx = multiprocessing.get_context("spawn")
  with _worker_env(), cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
    yield ex


# --------------------------------------------------------------------------- CLI

def add_prepare_args(parser):
  """Adds `jisp prepare` options to an argparse parser."""
  parser.add_argument("--raw-dir", required=True, help="folder of camera RAW files")
  parser.add_argument("--out", required=True, help="output folder (shards + manifest.json)")
  parser.add_argument("--protocol", default="invisp", choices=PROTOCOL_NAMES)
  parser.add_argument("--patch", type=int, default=64, help="stored patch size")
  parser.add_argument("--stride", type=int, default=64, help="patch grid stride")
  parser.add_argument("--split", type=float, default=0.85, help="train fraction (by file)")
  parser.add_argument("--shards", type=int, default=4, help="shards per split per run")
  parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
  parser.add_argument("--split-list", default=None,
                      help="file naming each file's split (JSON or '<split> <name>' lines)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the hash split")
  parser.add_argument("--encoding", default="float16", choices=shards_lib.ENCODINGS)
  parser.add_argument("--verify", default="full", choices=("full", "size"),
                      help="check of the shards already in --out: size + sha256 (full) "
                           "or size only")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def run_prepare(args):
  """CLI body: returns the exit status (0 iff at least one file is prepared)."""
  note = lambda line: print(f"note: {line}", file=sys.stderr)
  try:
    man = prepare(args.raw_dir, args.out, protocol=args.protocol, patch=args.patch,
                  stride=args.stride, split=args.split, shards=args.shards,
                  workers=args.workers, split_list=args.split_list,
                  seed=getattr(args, "seed", 0),
                  progress=not getattr(args, "no_progress", False),
                  encoding=getattr(args, "encoding", "float16"),
                  verify=getattr(args, "verify", "full"), log=note)
  except (UserError, OSError, ValueError) as e:
    print(f"jisp prepare: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for f in man["files"]:
    if f["status"] != "ok":
      print(f"warning: not prepared: {f['reason']}", file=sys.stderr)
  for sp, c in sorted(man.get("counts", {}).items()):
    print(f"{sp}: {c['files']} files, {c['patches']} patches")
  print(f"manifest: {pathlib.Path(args.out) / MANIFEST}")
  print(f"skipped: {man['n_skipped']}")
  sys.stdout.flush()
  return 0 if man["n_ok"] > 0 else 1
