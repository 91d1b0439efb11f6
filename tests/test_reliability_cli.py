"""Bad inputs to `jisp train` that used to crash with a traceback (reliability audit rows
50-54, 71-75): each is one line naming the key, file, variable or option, exit 2, before
anything is built or written; and a bug's traceback goes to a log file, not the user."""
import subprocess
import sys
import time

import pytest

from helpers import MICRO, REPO, cli, env

CFG = "configs/ddpm_tiny.py"


def _one_line(capsys, rc, needle, cmd="train"):
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2, err
  assert len(err) == 1 and err[0].startswith(f"jisp {cmd}: error:"), err
  assert needle in err[0], err[0]
  return err[0]


@pytest.mark.parametrize("override,needle", [
    ("--config.model.dtype=float13", "config key 'model.dtype': 'float13'"),
    ("--config.model.num_groups=7", "config key 'model.num_groups': 7 does not divide"),
    ("--config.model.attention_stages=(True,)", "config key 'model.attention_stages'"),
    ("--config.keep_checkpoints=0", "config key 'keep_checkpoints': 0"),
    ("--config.mesh.fsdp=0", "config key 'mesh.fsdp': 0"),
    ("--config.stages=((4,16,8),(2,32,4))", "stage lengths sum to 6 but num_steps is 200"),
    ("--config.stages=((100,16,8),(100,20,4))", "patch 20 must be a multiple of 8"),
    ("--config.stages=((100,32,8),(100,16,4))", "must equal data.patch_size=16"),
])
def test_bad_config_values_are_one_line_before_anything_is_built(tmp_path, capsys, override,
                                                                 needle):
  wd = tmp_path / "wd"
  t0 = time.time()
  rc = cli("train", "--config", CFG, "--workdir", wd, *MICRO, override)
  _one_line(capsys, rc, needle)
  assert not wd.exists()
  assert time.time() - t0 < 20  # the config loader, not a compile


def test_workdir_that_is_a_file_is_one_line_before_init(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("not a directory")
  rc = cli("train", "--config", CFG, "--workdir", f, *MICRO, "--config.num_steps=2")
  line = _one_line(capsys, rc, "--workdir is an existing file")
  assert str(f) in line
  assert f.read_text() == "not a directory"


def test_workdir_on_a_read_only_file_system_is_one_line(tmp_path, capsys):
  ro = tmp_path / "ro"
  ro.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {r.stderr.strip()}")
  try:
    capsys.readouterr()
    rc = cli("train", "--config", CFG, "--workdir", ro / "run", *MICRO, "--config.num_steps=2")
    _one_line(capsys, rc, "read-only file system")
  finally:
    subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.parametrize("flags,needle", [
    (["--num-processes", "2", "--process-id", "5", "--coordinator", "localhost:23457"],
     "--process-id 5 is out of range for --num-processes 2"),
    (["--num-processes", "2", "--process-id", "1"], "needs --coordinator"),
    (["--num-processes", "2", "--process-id", "0", "--coordinator", "localhost"],
     "must look like HOST:PORT"),
])
def test_bad_process_layout_is_one_line(tmp_path, capsys, flags, needle):
  rc = cli("train", "--config", CFG, "--workdir", tmp_path / "wd", *MICRO, *flags)
  _one_line(capsys, rc, needle)


def test_bad_cpu_device_count_is_one_line(tmp_path):
  # A subprocess: the variable is read before jax starts.
  p = subprocess.run([sys.executable, "-m", "jisp", "train", "--config", CFG, "--workdir",
                      str(tmp_path / "wd")], env=env(2, JISP_CPU_DEVICES="abc"), cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  err = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(err) == 1, p.stderr[-2000:]
  assert "JISP_CPU_DEVICES='abc'" in err[0]


def test_an_unexpected_failure_is_one_line_naming_the_log_with_the_traceback(
    tmp_path, capsys, monkeypatch):
  """Not a user error (here the train command itself raises): one line, exit 1, the
  traceback in WORKDIR/train.log; --debug re-raises."""
  from jisp.cli import train as train_cmd
  wd = tmp_path / "wd"
  wd.mkdir()

  def broken(args, rest):
    raise RuntimeError("something no check foresaw\nsecond line of detail")
  monkeypatch.setattr(train_cmd, "run", broken)  # the parser binds it when built
  rc = cli("train", "--config", CFG, "--workdir", wd)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1, err
  assert "RuntimeError: something no check foresaw" in err[0]
  assert f"traceback in {wd / 'train.log'}" in err[0]
  log = (wd / "train.log").read_text()
  assert "Traceback (most recent call last)" in log and "second line of detail" in log
  with pytest.raises(RuntimeError):
    cli("--debug", "train", "--config", CFG, "--workdir", wd)


# ------------------------------------------------------------------ broken data folders

@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  """A good prepared folder (2 virtual-camera RAWs, train + test) and one with no test
  split (what a bad RAW in a small folder used to leave behind)."""
  from jisp.data import prepare, virtual_camera
  root = tmp_path_factory.mktemp("data")
  virtual_camera.write_virtual_raw_dir(root / "raw", 2, seed=8, size=64)
  prepare.prepare(root / "raw", root / "good", patch=32, stride=32, split=0.5, shards=1,
                  workers=1, progress=False)
  prepare.prepare(root / "raw", root / "notest", patch=32, stride=32, split=1.0, shards=1,
                  workers=1, progress=False)
  return root


def _damage(root, tmp_path, how):
  import shutil
  if how == "no_test_split":
    return root / "notest", "'test' has no patches"
  d = tmp_path / "data"
  shutil.copytree(root / "good", d)
  shard = sorted(d.glob("train-*.tfrecord"))[0]
  if how == "truncated_shard":
    shard.write_bytes(shard.read_bytes()[:100])
    return d, f"{shard.name}: shard is truncated"
  if how == "deleted_shard":
    shard.unlink()
    return d, shard.name
  (d / "manifest.json").write_text("{not json")
  return d, "manifest.json"


@pytest.mark.parametrize("how", ["no_test_split", "truncated_shard", "deleted_shard",
                                 "broken_manifest"])
def test_broken_data_folder_is_one_line_before_training(data_dirs, tmp_path, capsys, how):
  """Audit rows 58-62: these used to train until the first eval (losing that step's
  checkpoint) or die in a TensorFlow traceback."""
  data, needle = _damage(data_dirs, tmp_path, how)
  wd = tmp_path / "wd"
  t0 = time.time()
  capsys.readouterr()
  rc = cli("train", "--config", CFG, "--workdir", wd, *MICRO, "--config.num_steps=2",
           f"--config.data.dir={data}", "--config.data.camera=")
  out = capsys.readouterr()
  err = out.err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("jisp train: error:"), err
  assert needle in err[0], err[0]
  assert "task=" not in out.out and not (wd / "checkpoints").exists()  # nothing built
  assert time.time() - t0 < 30
