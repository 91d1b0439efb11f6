"""`jisp prepare`: a folder of camera RAW files -> TFRecord patch shards + manifest.json.

Layout of OUT after a run:

  manifest.json                               what is in the folder (written atomically)
  <split>-b<batch>-<k>-of-<n>.tfrecord        patch shards (jisp.data.shards format)

Every run that finds new files adds one *batch* of shards (b0000, b0001, ...), so a grown
folder never rewrites earlier shards, and a run that finds nothing new writes nothing.
Files are recognised by sha256: re-running on the same input is a no-op, and a file whose
content already appears (under any name) is skipped as a duplicate.

Split is by file, never by patch (patches of one photo are correlated): either from a split
list, or from a hash of (seed, sha256) so that a file's split never depends on which other
files are in the folder. Hashing the content rather than the name keeps identical photos
under two names in the same split.

Heavy work (LibRaw decode + render + pair protocol) runs in worker processes; the parent
only writes shards, in file order, so the output is the same for any number of workers.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import sys
import tempfile
from collections import deque

import numpy as np

from jisp.data import shards as shards_lib

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
from jisp.core.camera import PROTOCOLS as PROTOCOL_NAMES

# Extensions LibRaw decodes (lower case). Other files in the folder are ignored, so a
# README or a sidecar JPEG next to the RAWs is not reported as a broken RAW.
RAW_EXTENSIONS = frozenset(
    ".3fr .ari .arw .bay .cap .cr2 .cr3 .crw .dcr .dcs .dng .erf .fff .gpr .iiq .k25 .kdc "
    ".mdc .mef .mos .mrw .nef .nrw .orf .pef .ptx .pxn .r3d .raf .raw .rw2 .rwl .rwz .sr2 "
    ".srf .srw .sti .x3f".split())

_SHARD_RE = re.compile(r"^([a-z]+)-b(\d{4,})-(\d{5})-of-(\d{5})\.tfrecord$")
_SPLIT_NAME_RE = re.compile(r"^[a-z]+$")


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


def _write_json_atomic(path, obj):
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a manifest is an ordinary file
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def load_manifest(out_dir):
  """The manifest of a prepared folder, or None if there is none."""
  p = pathlib.Path(out_dir) / MANIFEST
  if not p.exists():
    return None
  try:
    with open(p) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{p}: not a valid manifest ({e})") from None


def read_split_list(path):
  """{name: split} from a split list file.

  Accepted formats: JSON {"train": [names], "test": [names], ...}, or text lines
  "<split> <name>" (name may contain spaces; '#' starts a comment). A name matches a file
  by relative path, file name or file stem.
  """
  if str(path).startswith("fivek:"):
    return _fivek_split_list(str(path)[len("fivek:"):])
  path = pathlib.Path(path)
  text = path.read_text()
  out = {}
  if text.lstrip().startswith("{"):
    data = json.loads(text)
    items = [(s, n) for s, names in data.items() for n in names]
  else:
    items = []
    for i, line in enumerate(text.splitlines(), 1):
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      parts = line.split(None, 1)
      if len(parts) != 2:
        raise ValueError(f"{path}:{i}: expected '<split> <name>', got {line!r}")
      items.append((parts[0], parts[1].strip()))
  for split, name in items:
    if not _SPLIT_NAME_RE.match(split):
      raise ValueError(f"{path}: split name {split!r} must be lower-case letters")
    if out.get(name, split) != split:
      raise ValueError(f"{path}: {name!r} is listed in both {out[name]!r} and {split!r}")
    out[name] = split
  return out


FIVEK_LISTS = {"nikon_d700": "NIKON_D700", "canon_eos_5d": "Canon_EOS_5D"}


def _fivek_split_list(camera):
  """The official InvISP FiveK split shipped in jisp/data/splits (`--split-list fivek:CAMERA`)."""
  if camera not in FIVEK_LISTS:
    raise ValueError(f"--split-list fivek:{camera}: unknown camera (known: "
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
  return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


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


# --------------------------------------------------------------------------- prepare

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

    Returns {split: [(final name, count)]}. Round robin fills shards 0..n-1 in order, so the
    shards that exist are always a prefix and are named k-of-n with n = how many exist.
    """
    for ws in self.writers.values():
      for w in ws:
        w.close_temp()
    out = {}
    for split, ws in self.writers.items():
      n = len(ws)
      out[split] = []
      for k, w in enumerate(ws):
        w.path = self.out_dir / shard_name(split, self.batch, k, n)
        w.commit()
        out[split].append((w.path.name, w.count))
    return out

  def abort(self):
    for ws in self.writers.values():
      for w in ws:
        w.abort()


def _check_same_settings(old, new, mpath):
  for key in ("protocol", "patch", "stride", "encoding", "split", "seed"):
    if old.get(key) != new[key]:
      raise ValueError(f"{mpath}: folder was prepared with {key}={old.get(key)!r}, not "
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


def _assign_splits(cands, existing_ok, split, seed, split_map):
  """Split of each candidate file; returns {relpath: (split, rule)} or a skip reason str.

  Hash rule: train iff hash_fraction < split. So that a small folder still has a test set
  (and a train set), if after this batch one side would be empty while two or more files
  exist, the candidate nearest the boundary moves over (rule "forced"); assignments of
  earlier batches never change.
  """
  out = {}
  if split_map is not None:
    for rel, sha in cands:
      p = pathlib.PurePosixPath(rel)
      s = split_map.get(rel, split_map.get(p.name, split_map.get(p.stem)))
      out[rel] = (s, "list") if s else "not in the split list"
    return out
  us = {rel: hash_fraction(seed, sha) for rel, sha in cands}
  for rel, u in us.items():
    out[rel] = ("train" if u < split else "test", "hash")
  if 0.0 < split < 1.0 and len(cands) + sum(existing_ok.values()) >= 2 and cands:
    for side, pick in (("test", max), ("train", min)):
      have = existing_ok.get(side, 0) + sum(1 for v in out.values() if v[0] == side)
      if have == 0:
        others = [r for r in us if out[r][0] != side]
        if len(others) + sum(existing_ok.values()) >= 2 and others:
          rel = pick(others, key=lambda r: us[r])
          out[rel] = (side, "forced")
  return out


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


def prepare(raw_dir, out_dir, *, protocol="invisp", patch=64, stride=64, split=0.85,
            shards=4, workers=2, split_list=None, seed=0, progress=True,
            encoding="float16"):
  """Prepares (or extends) OUT from the RAW files in raw_dir; returns the manifest dict.

  See the module docstring. A file that cannot be read or paired is recorded with
  status "skipped" and its one-line reason; it never stops the run. workers > 1 uses a
  spawn process pool: call it from code under an `if __name__ == "__main__":` guard.
  """
  from jisp.data import pairs
  if protocol not in pairs.PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {pairs.PROTOCOLS}")
  if int(patch) < 2 or int(patch) % 2:
    raise ValueError(f"patch must be an even size >= 2, got {patch}")
  if int(stride) < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  if not 0.0 <= float(split) <= 1.0:
    raise ValueError(f"split must be in [0, 1], got {split}")
  if int(shards) < 1 or int(workers) < 1:
    raise ValueError(f"shards and workers must be >= 1, got {shards}, {workers}")
  if encoding not in shards_lib.ENCODINGS:
    raise ValueError(f"encoding must be one of {shards_lib.ENCODINGS}, got {encoding!r}")
  patch, stride, shards, workers = int(patch), int(stride), int(shards), int(workers)
  raw_dir, out_dir = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  if not raw_dir.is_dir():
    raise FileNotFoundError(f"{raw_dir}: raw folder does not exist or is not a directory")
  out_dir.mkdir(parents=True, exist_ok=True)
  mpath = out_dir / MANIFEST
  split_map = read_split_list(split_list) if split_list else None

  settings = {"protocol": protocol, "patch": patch, "stride": stride, "encoding": encoding,
              "split": float(split), "seed": int(seed)}
  man = load_manifest(out_dir)
  if man is not None:
    _check_same_settings(man, settings, mpath)
  _clean_stale(out_dir, man)

  old_files = (man or {}).get("files", [])
  known = {}
  for f in old_files:
    known.setdefault(f["sha256"], f)
  known_paths = {f["path"] for f in old_files}
  # Hashing a big folder on every run is the slow part of a no-op: reuse the recorded
  # sha256 of a file whose path, size and mtime are unchanged (as make/rsync do).
  by_stat = {(f["path"], f.get("bytes"), f.get("mtime_ns")): f["sha256"] for f in old_files}
  files = list_raw_files(raw_dir, exclude=out_dir)
  rel = {p: p.relative_to(raw_dir).as_posix() for p in files}
  stat = {p: p.stat() for p in files}
  new_entries, cands, seen = [], [], {}
  for p in files:
    st = stat[p]
    sha = by_stat.get((rel[p], st.st_size, st.st_mtime_ns)) or sha256_file(p)
    if sha in known:
      if rel[p] not in known_paths:  # same bytes under a new name: record, never re-use
        new_entries.append({"path": rel[p], "sha256": sha, "status": "skipped",
                            "reason": f"{p}: duplicate of {known[sha]['path']} (same "
                                      f"sha256, already in the manifest)",
                            **_stat_fields(stat[p])})
      continue  # prepared (or judged bad) before: the no-op path
    if sha in seen:
      new_entries.append({"path": rel[p], "sha256": sha, "status": "skipped",
                          "reason": f"{p}: duplicate of {seen[sha]} (same sha256)",
                          **_stat_fields(stat[p])})
      continue
    seen[sha] = rel[p]
    cands.append((p, sha))

  if man is not None and not new_entries and not cands:
    return man  # nothing new: nothing is rewritten

  existing_ok = {}
  for f in (man or {}).get("files", []):
    if f["status"] == "ok":
      existing_ok[f["split"]] = existing_ok.get(f["split"], 0) + 1
  assign = _assign_splits([(rel[p], s) for p, s in cands], existing_ok, float(split), seed,
                          split_map)
  todo = []
  for p, sha in cands:
    a = assign[rel[p]]
    if isinstance(a, str):
      new_entries.append({"path": rel[p], "sha256": sha, "status": "skipped",
                          "reason": f"{p}: {a} {split_list}", **_stat_fields(stat[p])})
    else:
      todo.append((p, sha, a))

  man = man or {"version": MANIFEST_VERSION, **settings,
                "split_list": str(split_list) if split_list else None,
                "raw_dir": str(raw_dir.resolve()),
                "batches": [], "shards": {}, "cameras": {}, "files": []}
  batch = len(man["batches"])
  writer = _BatchWriter(out_dir, batch, shards, encoding)
  entries = []
  try:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc="prepare", unit="file", disable=not progress,
               file=sys.stderr)
    with _pool(workers) as ex:
      args = lambda t: (str(t[0]), protocol, patch, stride, encoding)
      if ex is None:
        results = (_process_file(*args(t)) for t in todo)
      else:
        results = _ordered_map(ex, _process_file, [args(t) for t in todo], 2 * workers)
      for (p, sha, (sp, rule)), r in zip(todo, results):
        ok = r["status"] == "ok"
        e = {"path": rel[p], "sha256": sha, "status": r["status"], "reason": r.get("reason"),
             "split": sp if ok else None, "split_rule": rule if ok else None,
             **_stat_fields(stat[p])}
        if r["status"] == "ok":
          ks = writer.add(sp, r["raw"], r["rgb"], rel[p], r["camera"], r["pos"])
          e.update(camera=r["camera"], n_patches=len(r["pos"]), size=r["size"],
                   shard_index=sorted(ks), meta=r["meta"],
                   wb=r["profile"]["wb"], wb_source=r["profile"]["wb_source"],
                   orientation=r["profile"]["orientation"])
          man["cameras"].setdefault(r["camera"], dict(r["profile"]))
          man.setdefault("raw_shape", [patch, patch, int(r["raw"].shape[-1])])
          man.setdefault("rgb_shape", [patch, patch, int(r["rgb"].shape[-1])])
        entries.append(e)
        bar.update(1)
    bar.close()
    committed = writer.commit()
  except BaseException:
    writer.abort()
    raise

  names = {sp: [n for n, _ in lst] for sp, lst in committed.items()}
  for e in entries:
    if e["status"] == "ok":
      e["shards"] = [names[e["split"]][k] for k in e.pop("shard_index")]
  if todo:
    man["batches"].append({"id": f"b{batch:04d}",
                           "files": sum(e["status"] == "ok" for e in entries),
                           "shards": names})
  for sp, lst in committed.items():
    man["shards"].setdefault(sp, []).extend({"file": n, "n": c} for n, c in lst)
  man["files"].extend(new_entries + entries)
  man["files"].sort(key=lambda f: f["path"])
  _summarise(man)
  _write_json_atomic(mpath, _jsonable(man))
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
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def run_prepare(args):
  """CLI body: returns the exit status (0 iff at least one file is prepared)."""
  try:
    man = prepare(args.raw_dir, args.out, protocol=args.protocol, patch=args.patch,
                  stride=args.stride, split=args.split, shards=args.shards,
                  workers=args.workers, split_list=args.split_list,
                  seed=getattr(args, "seed", 0),
                  progress=not getattr(args, "no_progress", False),
                  encoding=getattr(args, "encoding", "float16"))
  except (OSError, ValueError) as e:
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
