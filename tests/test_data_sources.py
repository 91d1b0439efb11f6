"""jisp.train.sources: the run's data keys are checked against the prepared data before
anything is built (typos and mismatches were silently ignored when data.dir was set)."""
import pytest

from jisp.core.config import load
from jisp.core.errors import ConfigError, DataError
from jisp.train import sources


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  from jisp.data import prepare, virtual_camera
  root = tmp_path_factory.mktemp("src")
  virtual_camera.write_virtual_raw_dir(root / "raw", 2, seed=8, size=64)
  prepare.prepare(root / "raw", root / "out", patch=32, stride=32, split=0.5, shards=1,
                  workers=1, progress=False)
  return root / "out"


def _cfg(prepared, *overrides):
  return load("configs/ddpm_tiny.py", [f"--config.data.dir={prepared}", *overrides])


def _make(cfg, split="train"):
  return sources.make_source(cfg, split, local_batch=2, process_index=0, process_count=1)


@pytest.mark.parametrize("override,key,values", [
    ("data.protocol=nosuch", "data.protocol", ["nosuch", "invisp"]),
    ("data.protocol=linear", "data.protocol", ["linear", "invisp"]),
    ("data.source=nosuch", "data.source", ["nosuch", "shards"]),
    ("data.camera=nikon", "data.camera", ["nikon", "jisp virtual camera"]),
    ("data.patch_size=64", "data.patch_size", ["64", "32x32"]),
])
def test_mismatch_is_one_line_naming_key_and_values(prepared, override, key, values):
  cfg = _cfg(prepared, f"--config.{override}")
  for call in (lambda: sources.check_data(cfg), lambda: _make(cfg)):
    with pytest.raises(ConfigError) as e:
      call()
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg, msg
    assert all(v in msg for v in values), msg


def test_matching_config_builds_and_camera_part_matches(prepared):
  for camera in ("", "virtual", "JISP"):  # empty = any; otherwise a part of the name
    cfg = _cfg(prepared, f"--config.data.camera={camera}", "--config.data.patch_size=16")
    man = sources.check_data(cfg, splits=("train", "test"))
    assert man["protocol"] == "invisp"
  src = _make(cfg)
  assert src.next()["raw"].shape == (2, 16, 16, 3)
  # synthetic data has no manifest to check, but the names are still checked
  syn = load("configs/ddpm_tiny.py")
  assert sources.check_data(syn) is None
  with pytest.raises(ConfigError, match="data.protocol"):
    sources.check_data(load("configs/ddpm_tiny.py", ["--config.data.protocol=invISP"]))


def test_missing_split_is_found_before_training(tmp_path):
  from jisp.data import prepare, virtual_camera
  virtual_camera.write_virtual_raw_dir(tmp_path / "raw", 1, seed=8, size=64)
  prepare.prepare(tmp_path / "raw", tmp_path / "one", patch=32, stride=32, split=1.0,
                  shards=1, workers=1, progress=False)
  cfg = _cfg(tmp_path / "one", "--config.data.camera=")
  with pytest.raises(DataError, match="'test' has no patches"):
    sources.check_data(cfg, splits=("train", "test"))


def test_check_data_can_verify_the_shards(prepared, tmp_path):
  import shutil
  out = tmp_path / "out"
  shutil.copytree(prepared, out)
  cfg = _cfg(out, "--config.data.camera=")
  assert sources.check_data(cfg, ("train", "test"), verify="size") is not None
  victim = sorted(out.glob("test-*.tfrecord"))[0]
  victim.write_bytes(victim.read_bytes()[:100])
  assert sources.check_data(cfg, ("train",), verify="size") is not None
  with pytest.raises(DataError, match=f"{victim.name}: shard is truncated"):
    sources.check_data(cfg, ("train", "test"), verify="size")
