"""TFDS builder for the MIT-Adobe FiveK RAW subsets used by InvISP and the DDPM paper.

FiveK cannot be downloaded automatically here (large, and the user fetches it from MIT);
the builder reads the DNGs from a manual download dir, pairs each file with the same
protocol code as `jisp prepare` (jisp.data.pairs via prepare.pair_patches) and yields
non-overlapping patch examples.

Splits are the official InvISP file lists shipped in jisp/data/splits/ (see SOURCE.md
there): Nikon D700 414 train / 73 test, Canon EOS 5D 650 train / 127 test. Files of the
camera that are not in a list are not used; listed files missing from the manual dir are
reported (and the build fails only if a split would be empty).

Usage (offline):
  builder = FiveK(config="nikon_d700_invisp", data_dir=DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=FIVEK_DNG_DIR, try_download_gcs=False))
  ds = builder.as_dataset(split="train")
Custom patch sizes: pass `config=FiveKConfig(name=..., camera=..., protocol=..., patch=64)`.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import pathlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow_datasets as tfds  # noqa: E402  (jisp.data is where tfds may be imported)

from jisp.data import prepare as prepare_lib  # noqa: E402

_log = logging.getLogger(__name__)

# camera config key -> (split list prefix, camera name)
CAMERAS = {
    "nikon_d700": ("NIKON_D700", "Nikon D700"),
    "canon_eos_5d": ("Canon_EOS_5D", "Canon EOS 5D"),
}
DEFAULT_PATCH = 256


def split_ids(camera, split):
  """The official InvISP file ids of `camera` ("nikon_d700" / "canon_eos_5d") for a split."""
  prefix, _ = CAMERAS[camera]
  res = importlib.resources.files("jisp.data").joinpath("splits", f"{prefix}_{split}.txt")
  return [line.strip() for line in res.read_text().splitlines() if line.strip()]


def _norm_id(name):
  # One Nikon id is published as "a1379-_DSC5348 (original)"; match with or without it.
  return name.replace(" (original)", "").strip()


@dataclasses.dataclass(eq=False)
class FiveKConfig(tfds.core.BuilderConfig):
  camera: str = "nikon_d700"
  protocol: str = "invisp"
  patch: int = DEFAULT_PATCH
  stride: int | None = None  # None: = patch (non-overlapping)


def _configs():
  out = []
  for cam in CAMERAS:
    for proto in prepare_lib.PROTOCOL_NAMES:
      out.append(FiveKConfig(
          name=f"{cam}_{proto}", camera=cam, protocol=proto,
          description=f"{CAMERAS[cam][1]} RAW, protocol {proto!r}, "
                      f"{DEFAULT_PATCH}x{DEFAULT_PATCH} patches"))
  return out


class FiveK(tfds.core.GeneratorBasedBuilder):
  """MIT-Adobe FiveK RAW (Nikon D700 / Canon EOS 5D) as aligned RAW/sRGB patch pairs."""

  name = "jisp_fivek_raw"
  # Major version = jisp.data.pairs.PROTOCOL_VERSION: a build of another protocol version
  # lives in another folder and is never read as this one.
  VERSION = tfds.core.Version("3.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: InvISP split lists, jisp pair protocols.",
      "2.0.0": "Pair protocol version 2: RAW white balance with gains / max (InvISP's "
               "official normalisation), never clipped; sRGB JPEG 4:2:2.",
      "3.0.0": "Pair protocol version 3: the sRGB render without LibRaw's adjust_maximum, "
               "so its brightness follows the white level, not the picture.",
  }
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the MIT-Adobe FiveK dataset RAW photos (DNG) from
https://data.csail.mit.edu/graphics/fivek/ (or only the files listed in jisp/data/splits/,
e.g. with the URL lists NIKON_D700.txt / Canon_EOS_5D.txt of github.com/yzxing87/Invertible-ISP)
and pass the folder holding them (searched recursively for <id>.dng, e.g.
a0002-dgw_005.dng) as manual_dir:
  tfds.download.DownloadConfig(manual_dir=PATH, try_download_gcs=False)
"""

  # tfds 4.9.10's default `code_path` imports the `importlib_resources` backport, which it
  # only declares for Python < 3.9; the path of this file is all it needs.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    from etils import epath
    return epath.Path(__file__)

  def _info(self):
    cfg = self.builder_config
    c_raw = 4 if cfg.protocol == "packed" else 3
    p = int(cfg.patch)
    t = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.float16,
                                           encoding=tfds.features.Encoding.BYTES)
    return self.dataset_info_from_configs(
        description=("Aligned RAW / sRGB patches of MIT-Adobe FiveK "
                     f"({CAMERAS[cfg.camera][1]}), pair protocol {cfg.protocol!r}; values "
                     "in [0, 1], float16."),
        features=tfds.features.FeaturesDict({
            "raw": t((p, p, c_raw)),
            "rgb": t((p, p, 3)),
            "file_id": tfds.features.Text(),
            "camera": tfds.features.Text(),
            "pos": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        }),
        supervised_keys=("rgb", "raw"),
        homepage="https://data.csail.mit.edu/graphics/fivek/",
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual = pathlib.Path(dl_manager.manual_dir)
    found = {}
    for p in manual.rglob("*"):
      if p.is_file() and p.suffix.lower() == ".dng":
        found.setdefault(_norm_id(p.stem), p)
    gens = {}
    for split in ("train", "test"):
      ids = split_ids(cfg.camera, split)
      paths = [found[_norm_id(i)] for i in ids if _norm_id(i) in found]
      missing = len(ids) - len(paths)
      if missing:
        _log.warning("FiveK %s %s: %d of %d listed files not found under %s", cfg.camera,
                     split, missing, len(ids), manual)
      if not paths:
        raise FileNotFoundError(
            f"{manual}: none of the {len(ids)} {cfg.camera} {split} files of the InvISP "
            f"split list was found (expected e.g. {ids[0]}.dng)")
      gens[split] = self._generate_examples(paths)
    return gens

  def _generate_examples(self, paths):
    cfg = self.builder_config
    stride = int(cfg.stride or cfg.patch)
    for path in sorted(paths):
      r = prepare_lib.pair_patches(path, cfg.protocol, int(cfg.patch), stride)
      fid = _norm_id(path.stem)
      for k, (y, x) in enumerate(r["pos"]):
        yield f"{fid}/{y:05d}_{x:05d}", {
            "raw": r["raw"][k].astype(np.float16),
            "rgb": r["rgb"][k].astype(np.float16),
            "file_id": fid,
            "camera": r["camera"],
            "pos": np.array([y, x], np.int32),
        }
