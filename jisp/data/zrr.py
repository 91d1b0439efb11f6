"""Zurich RAW-to-RGB (ZRR, Ignatov et al. 2020) pairs, for users who have the dataset.

The ZRR archive cannot be had here, so DiffRAW's experiments in jisp run on RAW files
rendered by LibRaw; this loader lets the same DTDM task train on the real pairs.

Layout (the official archive, files paired by name):
  ROOT/{train,test}/huawei_raw/<n>.png  Huawei P20 RAW as a 1-channel 16-bit PNG Bayer
                                        mosaic (RGGB, 10-bit values), 448x448
  ROOT/{train,test}/canon/<n>.jpg       Canon 5D Mark IV sRGB, roughly aligned, 448x448
A 4-channel (8-bit) PNG is taken as already packed in R, Gr, Gb, B order (half size).

Normalisation as LiteISPNet (the colour network DiffRAW uses): (v - 63) / (1020 - 63),
clipped; PyNET uses black 0. For the DTDM RAW condition each pair also gets `raw`: the
mosaic bilinearly demosaiced to the sRGB's resolution and gamma-compressed (1/2.2), the
form of jisp's `invisp` batches (ZRR has no white-balance metadata, so none is applied).
"""
from __future__ import annotations

import pathlib
from typing import Iterator

import numpy as np

from jisp.core.camera import PROTOCOL_GAMMA
from jisp.data.indexed_source import IndexedBatchSource

RAW_DIR, RGB_DIR = "huawei_raw", "canon"
PATTERN = "RGGB"
BLACK_LEVEL, WHITE_LEVEL = 63.0, 1020.0
SPLITS = ("train", "test")


def _sort_key(p: pathlib.Path):
  return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem)


def list_pairs(root, split: str = "train") -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(raw_png, rgb_jpg) paths of one split, in numeric order; RAWs without an sRGB are
  skipped (ZRR's full-resolution test images have none)."""
  if split not in SPLITS:
    raise ValueError(f"zrr: split must be one of {SPLITS}, got {split!r}")
  raw_dir = pathlib.Path(root) / split / RAW_DIR
  rgb_dir = pathlib.Path(root) / split / RGB_DIR
  for d in (raw_dir, rgb_dir):
    if not d.is_dir():
      raise FileNotFoundError(f"{d}: missing (expected the ZRR layout "
                              f"ROOT/{split}/{RAW_DIR}/*.png + ROOT/{split}/{RGB_DIR}/*.jpg)")
  pairs = []
  for raw in sorted(raw_dir.glob("*.png"), key=_sort_key):
    rgb = rgb_dir / f"{raw.stem}.jpg"
    if rgb.is_file():
      pairs.append((raw, rgb))
  if not pairs:
    raise FileNotFoundError(f"{raw_dir}: no RAW png with a matching {RGB_DIR}/<name>.jpg")
  return pairs


def _png_header(path: pathlib.Path) -> tuple[int, int]:
  with open(path, "rb") as f:
    head = f.read(26)
  if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path}: not a PNG file")
  return head[24], head[25]  # bit depth, colour type


def read_raw(path, black_level: float = BLACK_LEVEL, white_level: float = WHITE_LEVEL
             ) -> np.ndarray:
  """Packed RAW (h, w, 4) float32 in [0, 1], R, Gr, Gb, B order."""
  from PIL import Image
  from jisp.isp import bayer
  path = pathlib.Path(path)
  depth, colour_type = _png_header(path)
  if depth == 16 and colour_type not in (0,):
    # Pillow reads 16-bit colour PNGs as 8 bits without saying so: refuse, don't guess.
    raise ValueError(f"{path}: 16-bit multi-channel PNG is not supported (store the RAW as "
                     "a 1-channel mosaic, as ZRR does)")
  try:
    with Image.open(path) as im:
      a = np.asarray(im)
  except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
    raise ValueError(f"{path}: cannot read RAW png ({type(e).__name__}: {e})") from None
  a = a.astype(np.float32)
  if a.ndim == 2:
    h, w = a.shape
    if h % 2 or w % 2:
      raise ValueError(f"{path}: Bayer mosaic must have even height and width, got {a.shape}")
    a = np.asarray(bayer.pack(a, PATTERN))
  elif a.ndim != 3 or a.shape[-1] != 4:
    raise ValueError(f"{path}: expected a 1-channel mosaic or 4-channel packed RAW, "
                     f"got shape {a.shape}")
  return np.clip((a - black_level) / (white_level - black_level), 0.0, 1.0)


def read_rgb(path) -> np.ndarray:
  """sRGB (H, W, 3) float32 in [0, 1]."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      a = np.asarray(im.convert("RGB"))
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{path}: cannot read sRGB image ({type(e).__name__}: {e})") from None
  return a.astype(np.float32) / 255.0


def packed_to_invisp(packed, gamma: float = PROTOCOL_GAMMA["invisp"]) -> np.ndarray:
  """Packed (h, w, 4) -> (2h, 2w, 3): unpack, bilinear demosaic, gamma 1/gamma."""
  from jisp.isp import bayer, tone
  mosaic = bayer.unpack(np.asarray(packed, np.float32), PATTERN)
  return np.asarray(tone.gamma_compress(bayer.demosaic_bilinear(mosaic, PATTERN), gamma),
                    np.float32)


def load_pair(raw_path, rgb_path, black_level=BLACK_LEVEL, white_level=WHITE_LEVEL) -> dict:
  """dict(name, packed (h,w,4), raw (H,W,3) invisp-like, rgb (H,W,3)), all float32 [0,1]."""
  packed = read_raw(raw_path, black_level, white_level)
  rgb = read_rgb(rgb_path)
  raw = packed_to_invisp(packed)
  if raw.shape != rgb.shape:
    raise ValueError(f"{raw_path}: RAW brought to {raw.shape[:2]} does not match "
                     f"{rgb_path} of size {rgb.shape[:2]}")
  return {"name": pathlib.Path(raw_path).stem, "packed": packed, "raw": raw, "rgb": rgb}


def iter_pairs(root, split: str = "train", **kw) -> Iterator[dict]:
  """Every pair of a split, loaded one at a time (ZRR's train split is ~46.8k pairs)."""
  for raw, rgb in list_pairs(root, split):
    yield load_pair(raw, rgb, **kw)


class ZRRSource(IndexedBatchSource):
  """Random aligned patches of ZRR pairs as batches {"raw", "rgb"} (B, P, P, 3): the
  source protocol of jisp.train (next / get_state / set_state / close). Each example is a
  pure function of (seed, split, batch number, global index), like SyntheticSource, so
  every process reads only its own share and a resumed run sees the same examples."""

  def __init__(self, root, *, patch_size: int, local_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, split: str = "train"):
    self.pairs = list_pairs(root, split)
    self.patch = patch_size
    self.local_batch = local_batch
    self.seed = seed
    self.process_index = process_index
    self.split_id = SPLITS.index(split)
    self.batches = 0

  def example(self, n: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.split_id, n, i])
    raw_path, rgb_path = self.pairs[rng.integers(len(self.pairs))]
    pair = load_pair(raw_path, rgb_path)
    h, w = pair["rgb"].shape[:2]
    p = self.patch
    if h < p or w < p:
      raise ValueError(f"{rgb_path}: {h}x{w} is smaller than patch_size={p}")
    # Even offsets keep the patch on the 2x2 Bayer grid of the demosaiced RAW.
    y = 2 * rng.integers((h - p) // 2 + 1)
    x = 2 * rng.integers((w - p) // 2 + 1)
    return pair["raw"][y:y + p, x:x + p], pair["rgb"][y:y + p, x:x + p]

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    first = self.process_index * self.local_batch
    ex = [self.example(n, i) for i in range(first, first + self.local_batch)]
    return {"raw": np.stack([e[0] for e in ex]), "rgb": np.stack([e[1] for e in ex])}
