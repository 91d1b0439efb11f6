"""FiveK TFDS builder, exercised offline on virtual-camera DNGs named like FiveK files."""
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jisp.data import fivek  # noqa: E402
from jisp.data import prepare as prep  # noqa: E402

# (id, split) from the shipped Nikon D700 lists
NAMES = [("a2754-_DSC7455", "train"), ("a3390-dgw_070", "train"), ("a4331-_DGW0241", "test")]


def test_shipped_split_lists():
  """The official InvISP lists: sizes as published, disjoint, FiveK-style ids."""
  sizes = {("nikon_d700", "train"): 414, ("nikon_d700", "test"): 73,
           ("canon_eos_5d", "train"): 650, ("canon_eos_5d", "test"): 127}
  for (cam, split), n in sizes.items():
    ids = fivek.split_ids(cam, split)
    assert len(ids) == len(set(ids)) == n
    assert all(i[0] == "a" and i[1:5].isdigit() and i[5] == "-" for i in ids)
  for cam in fivek.CAMERAS:
    assert not set(fivek.split_ids(cam, "train")) & set(fivek.split_ids(cam, "test"))
  assert not set(fivek.split_ids("nikon_d700", "train")) & set(
      fivek.split_ids("canon_eos_5d", "train"))
  # a build of another pair-protocol version is another TFDS version
  from jisp.data import pairs
  assert fivek.FiveK.VERSION.major == pairs.PROTOCOL_VERSION
  # every (camera, protocol) has a registered config
  names = {c.name for c in fivek.FiveK.BUILDER_CONFIGS}
  assert {f"{c}_{p}" for c in fivek.CAMERAS for p in prep.PROTOCOL_NAMES} == names


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  from jisp.data import virtual_camera
  root = tmp_path_factory.mktemp("fivek")
  paths = virtual_camera.write_virtual_raw_dir(root / "gen", len(NAMES), seed=2, size=96)
  manual = root / "manual" / "raw_photos" / "HQa1to700" / "photos"  # nested like FiveK
  manual.mkdir(parents=True)
  for p, (name, _) in zip(paths, NAMES):
    shutil.copy(p, manual / f"{name}.dng")
  shutil.copy(paths[0], manual / "a9999-not_in_any_list.dng")
  return root / "manual"


def test_builder_offline_on_generated_dngs(manual_dir, tmp_path):
  cfg = fivek.FiveKConfig(name="nikon_d700_packed_p16", camera="nikon_d700",
                          protocol="packed", patch=16)
  builder = fivek.FiveK(config=cfg, data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  want = {s: {n for n, sp in NAMES if sp == s} for s in ("train", "test")}
  # packed: 96x96 mosaic -> 48x48 pair -> 3x3 patches of 16 per file
  for split in ("train", "test"):
    exs = list(builder.as_dataset(split=split).as_numpy_iterator())
    ids = {e["file_id"].decode() for e in exs}
    assert ids == want[split]
    assert len(exs) == 9 * len(want[split])
    assert exs[0]["raw"].shape == (16, 16, 4) and exs[0]["rgb"].shape == (16, 16, 3)
    # the same pairs code as `jisp prepare`: identical patches (float16 storage)
    name = sorted(ids)[0]
    r = prep.pair_patches(next(manual_dir.rglob(f"{name}.dng")), "packed", 16, 16)
    for e in (e for e in exs if e["file_id"].decode() == name):
      k = [tuple(p) for p in r["pos"]].index(tuple(e["pos"]))
      np.testing.assert_array_equal(e["raw"], r["raw"][k].astype(np.float16))
      np.testing.assert_array_equal(e["rgb"], r["rgb"][k].astype(np.float16))
  assert builder.info.splits["train"].num_examples == 18


def test_builder_fails_clearly_without_files(tmp_path):
  (tmp_path / "no_listed_files").mkdir()
  (tmp_path / "no_listed_files" / "a9999-not_listed.dng").write_bytes(b"never read")
  builder = fivek.FiveK(config="canon_eos_5d_invisp", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match="canon_eos_5d train"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / "no_listed_files"), try_download_gcs=False))
