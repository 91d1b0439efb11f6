"""AIM 2022 Reversed ISP pairs: full-resolution sRGB with half-resolution packed RGGB RAW.

Three ways to get them, one batch form {"rgb": (B, P, P, 3), "raw": (B, P/2, P/2, 4)} in
[0, 1] (R, Gr, Gb, B), what SSDNet's packed4 head maps:

  AIMFolderSource    the challenge data, for users who have it (Codalab, after
                     registering): ROOT/train/<name>.jpg + <name>.npy (the .npy uint16
                     (h, w, 4), already RGGB, values 0..1024; divided by 1024 as the
                     organisers' scoring does), or those files directly in ROOT. The test
                     split is ROOT/val/ when it holds .npy files (the public val_rgb/ has
                     none), else the last `test_fraction` of the sorted names (the paper
                     does not say which held-out split its Tables 1-2 use; ours is stated).
  SyntheticAIMSource the in-memory synthetic camera (jisp.data.synthetic), its linear
                     camera RGB mosaicked RGGB and packed: packed-mode training with no
                     files (tests, the demo).
  load_raw_file      a camera RAW file through rawpy in the `aim` protocol
                     (jisp.data.pairs.make_aim_pair), for evaluation on real files.

Random crops start on even sRGB pixels so the RAW crop starts on an R site: an odd offset
would shift the Bayer phase (the official SSDNet code's progressive crop does, spec 8.1).
Batches are pure functions of (seed, split, batch number, example index), as every jisp
source, so a resumed run sees the batches an unbroken one would.
"""
from __future__ import annotations

import pathlib

import numpy as np

from jisp.core.errors import ConfigError, DataError
from jisp.data.indexed_source import IndexedBatchSource

AIM_MAX = 1024.0        # the challenge's RAW scale ("max value 2**10 = 1024")
TEST_FRACTION = 0.1     # held-out tail of the sorted training names when there is no val/
SPLITS = ("train", "test")


# --------------------------------------------------------------------------- files

def _sort_key(p: pathlib.Path):
  head = p.stem.split("_")[0]
  return (0, int(head), p.stem) if head.isdigit() else (1, 0, p.stem)


def _pairs_in(d: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  out = []
  for npy in sorted(d.glob("*.npy"), key=_sort_key):
    jpg = npy.with_suffix(".jpg")
    if jpg.is_file():
      out.append((jpg, npy))
  return out


def list_pairs(root, split: str = "train", test_fraction: float = TEST_FRACTION
               ) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(rgb .jpg, raw .npy) paths of one split (module docstring), in name order."""
  if split not in SPLITS:
    raise ValueError(f"aim: split must be one of {SPLITS}, got {split!r}")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: no such folder (expected an AIM 2022 folder: train/*.jpg + "
                    "train/*.npy)")
  train_dir = root / "train" if (root / "train").is_dir() else root
  pairs = _pairs_in(train_dir)
  if not pairs:
    raise DataError(f"{train_dir}: no <name>.npy with a matching <name>.jpg (the AIM 2022 "
                    "layout: RGB .jpg and packed RAW .npy of the same name)")
  val = _pairs_in(root / "val") if (root / "val").is_dir() else []
  if val:
    return pairs if split == "train" else val
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"aim: test_fraction must be in (0, 1), got {test_fraction}")
  n_test = max(1, int(round(len(pairs) * test_fraction))) if len(pairs) > 1 else 0
  if split == "test" and n_test == 0:
    raise DataError(f"{train_dir}: one pair only, nothing to hold out for the test split")
  return pairs[:len(pairs) - n_test] if split == "train" else pairs[len(pairs) - n_test:]


def read_raw(path) -> np.ndarray:
  """Packed RAW (h, w, 4) float32 in [0, 1] from a challenge .npy (uint16, 0..1024)."""
  path = pathlib.Path(path)
  try:
    a = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read RAW .npy ({' '.join(str(e).split())})") from None
  if a.ndim != 3 or a.shape[-1] != 4:
    raise DataError(f"{path}: expected packed RAW (h, w, 4), got shape {a.shape}")
  if not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.floating):
    raise DataError(f"{path}: RAW must be numeric, got dtype {a.dtype}")
  a = a.astype(np.float32)
  if a.size and (a.min() < 0 or a.max() > AIM_MAX):
    raise DataError(f"{path}: RAW values must lie in [0, {AIM_MAX:g}] (the challenge's "
                    f"10-bit scale), got [{a.min():g}, {a.max():g}]")
  return a / np.float32(AIM_MAX)


def read_rgb(path) -> np.ndarray:
  """sRGB (H, W, 3) float32 in [0, 1]."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      a = np.asarray(im.convert("RGB"))
  except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
    raise DataError(f"{path}: cannot read sRGB image ({type(e).__name__}: {e})") from None
  return a.astype(np.float32) / 255.0


def load_pair(rgb_path, raw_path) -> dict:
  """{'name', 'rgb' (H, W, 3), 'raw' (H/2, W/2, 4)} float32 in [0, 1]."""
  rgb, raw = read_rgb(rgb_path), read_raw(raw_path)
  if rgb.shape[0] != 2 * raw.shape[0] or rgb.shape[1] != 2 * raw.shape[1]:
    raise DataError(f"{raw_path}: RAW {raw.shape[1]}x{raw.shape[0]} is not half of "
                    f"{rgb_path} ({rgb.shape[1]}x{rgb.shape[0]})")
  return {"name": pathlib.Path(rgb_path).stem, "rgb": rgb, "raw": raw}


def to_submission(packed) -> np.ndarray:
  """A prediction (h, w, 4) in [0, 1] as the challenge stores it: round(x * 1024), uint16."""
  x = np.clip(np.asarray(packed, np.float64), 0.0, 1.0)
  return np.round(x * AIM_MAX).astype(np.uint16)


def load_raw_file(path) -> dict:
  """A camera RAW file in the `aim` protocol: {'rgb', 'raw', 'bits', 'camera', 'meta'}
  ('camera': the file's own camera features, for tasks that take them)."""
  from jisp.core.camera import camera_features
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(path)
  pair = pairs.make_aim_pair(cap, raw_io.render_srgb(cap))
  return {"rgb": pair["rgb"], "raw": pair["raw"], "bits": int(cap.bits),
          "camera": camera_features(cap.profile()), "meta": pair["meta"]}


# --------------------------------------------------------------------------- crops

def crop_offsets(rng: np.random.Generator, height: int, width: int, patch: int
                 ) -> tuple[int, int]:
  """A random (top, left) for a patch x patch sRGB crop, both even."""
  if patch % 2:
    raise ValueError(f"aim: the sRGB patch must be even (the RAW patch is half), got {patch}")
  if height < patch or width < patch:
    raise ValueError(f"aim: image {width}x{height} is smaller than patch_size={patch}")
  return (2 * int(rng.integers((height - patch) // 2 + 1)),
          2 * int(rng.integers((width - patch) // 2 + 1)))


def crop_pair(rgb, raw, top: int, left: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
  """The sRGB crop [top, top + patch) x [left, left + patch) and its RAW crop (half of it);
  top and left must be even so the RAW crop starts on an R site."""
  if top % 2 or left % 2 or patch % 2:
    raise ValueError(f"aim: crop offsets and size must be even to keep the Bayer phase, got "
                     f"top={top} left={left} patch={patch}")
  h = patch // 2
  return (rgb[top:top + patch, left:left + patch],
          raw[top // 2:top // 2 + h, left // 2:left // 2 + h])


# --------------------------------------------------------------------------- sources

class AIMFolderSource(IndexedBatchSource):
  """Random even-offset crops of an AIM 2022 folder's pairs (module docstring)."""

  def __init__(self, root, *, patch_size: int, local_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               test_fraction: float = TEST_FRACTION):
    del process_count
    self.pairs = list_pairs(root, split, test_fraction)
    self.patch = int(patch_size)
    self.local_batch = local_batch
    self.seed = seed
    self.process_index = process_index
    self.split_id = SPLITS.index(split)
    self.batches = 0
    self._cache: dict[int, dict] = {}

  def _pair(self, k: int) -> dict:
    # Challenge pairs are 504 x 504: a few thousand fit in memory, and are re-read otherwise.
    if k not in self._cache:
      if len(self._cache) > 4096:
        self._cache.clear()
      self._cache[k] = load_pair(*self.pairs[k])
    return self._cache[k]

  def example(self, n: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.split_id, n, i])
    pair = self._pair(int(rng.integers(len(self.pairs))))
    top, left = crop_offsets(rng, *pair["rgb"].shape[:2], self.patch)
    return crop_pair(pair["rgb"], pair["raw"], top, left, self.patch)

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    first = self.process_index * self.local_batch
    ex = [self.example(n, i) for i in range(first, first + self.local_batch)]
    return {"rgb": np.stack([e[0] for e in ex]), "raw": np.stack([e[1] for e in ex])}


def synthetic_pair(rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
  """(rgb (P, P, 3), raw (P/2, P/2, 4)) of the synthetic camera: its sRGB, and its linear
  camera RGB (the gamma of its 3-channel RAW target undone) mosaicked RGGB and packed."""
  from jisp.data import synthetic
  rgb, raw3 = synthetic.make_pair(rng, patch)
  lin = np.clip(raw3, 0.0, 1.0) ** np.float32(2.2)
  # RGGB sites in R, Gr, Gb, B order (numpy: one example at a time, no jax dispatch)
  packed = np.stack([lin[0::2, 0::2, 0], lin[0::2, 1::2, 1], lin[1::2, 0::2, 1],
                     lin[1::2, 1::2, 2]], axis=-1)
  return rgb, packed.astype(np.float32)


class SyntheticAIMSource(IndexedBatchSource):
  """Packed-RAW batches of the synthetic camera (no files)."""

  def __init__(self, *, patch_size: int, local_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, split: str = "train"):
    del process_count
    if int(patch_size) % 2:
      raise ValueError(f"aim: the sRGB patch must be even, got {patch_size}")
    self.patch = int(patch_size)
    self.local_batch = local_batch
    self.seed = seed
    self.process_index = process_index
    self.split_id = SPLITS.index(split)
    self.batches = 0

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    rgbs, raws = [], []
    first = self.process_index * self.local_batch
    for i in range(first, first + self.local_batch):
      rgb, raw = synthetic_pair(np.random.default_rng([self.seed, self.split_id, n, i]),
                                self.patch)
      rgbs.append(rgb)
      raws.append(raw)
    return {"rgb": np.stack(rgbs), "raw": np.stack(raws)}


# --------------------------------------------------------------------------- config

def _get(dcfg, key, default=None):
  return dcfg.get(key, default) if hasattr(dcfg, "get") else getattr(dcfg, key, default)


def uses_aim(dcfg) -> bool:
  """Whether the data config asks for AIM-style pairs (source 'aim' or protocol 'aim')."""
  return _get(dcfg, "source") == "aim" or _get(dcfg, "protocol") == "aim"


def check_config(config) -> None:
  """ConfigError for data keys that cannot give AIM-style batches."""
  dcfg = config.data
  source = _get(dcfg, "source", "synthetic")
  protocol = _get(dcfg, "protocol")
  patch = _get(dcfg, "patch_size")
  if source not in ("aim", "synthetic"):
    raise ConfigError(f"config key 'data.protocol' is 'aim' but data.source is {source!r}: "
                      "AIM-style pairs come from an AIM 2022 folder (data.source='aim', "
                      "data.dir=ROOT) or the synthetic camera (data.source='synthetic'); "
                      "`jisp prepare` shards hold same-resolution pairs")
  if source == "aim" and protocol not in (None, "aim"):
    raise ConfigError(f"config key 'data.protocol' is {protocol!r} but data.source='aim' "
                      "gives the 'aim' protocol (full-resolution sRGB, half-resolution "
                      "packed RAW); set --config.data.protocol=aim")
  if source == "synthetic" and _get(dcfg, "dir"):
    raise ConfigError(f"config key 'data.dir' is {_get(dcfg, 'dir')!r} but data.source is "
                      "'synthetic' with data.protocol='aim'; for an AIM 2022 folder set "
                      "--config.data.source=aim (prepared shards cannot hold AIM-style "
                      "pairs)")
  if source == "aim" and not _get(dcfg, "dir"):
    raise ConfigError("config key 'data.dir' must name the AIM 2022 folder (train/*.jpg + "
                      "train/*.npy) when data.source='aim'")
  if patch is not None and int(patch) % 2:
    raise ConfigError(f"bad value for config key 'data.patch_size': {patch} (AIM-style pairs "
                      "need an even sRGB patch: the RAW patch is half of it)")
  if source == "aim":
    try:
      list_pairs(_get(dcfg, "dir"), "train", float(_get(dcfg, "test_fraction",
                                                         TEST_FRACTION)))
    except DataError as e:
      raise ConfigError(f"config key 'data.dir': {e}") from None


def make_source(config, split: str, *, local_batch: int, process_index: int,
                process_count: int, train: bool = True):
  """The AIM-style batch source of `config` (check_config first)."""
  check_config(config)
  dcfg = config.data
  seed = config.seed if train else config.seed + 1
  split = split if split in SPLITS else ("train" if train else "test")
  kw = dict(patch_size=int(dcfg.patch_size), local_batch=local_batch, seed=seed,
            process_index=process_index, process_count=process_count, split=split)
  if _get(dcfg, "source") == "aim":
    return AIMFolderSource(dcfg.dir, test_fraction=float(_get(dcfg, "test_fraction",
                                                               TEST_FRACTION)), **kw)
  return SyntheticAIMSource(**kw)
