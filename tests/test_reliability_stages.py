"""Progressive training stages (config `stages`, issue 12): one compile per stage at the
stage's patch and batch, a resume inside any stage replays the unbroken run, and a resume
may extend the current stage but not rewrite one already begun."""
import shutil

import pytest

from helpers import MICRO, cli, losses

CFG = "configs/ddpm_tiny.py"
# 8 fake devices: both batches divide them; the U-Net downsamples twice (patch % 4).
STAGES = [*MICRO, "--config.batch_size=16", "--config.stages=((3,16,16),(3,24,8))",
          "--config.num_steps=6", "--config.log_every=1"]


def _rel(a, b):
  return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture
def compiles(monkeypatch):
  from jisp.train import loop
  seen = []
  real = loop.compile_train_step

  def spy(task, tx, lr_fn, config, *args, **kwargs):
    seen.append((int(config.data.patch_size), int(config.batch_size),
                 tuple(task.batch_spec(config.batch_size)["rgb"].shape)))
    return real(task, tx, lr_fn, config, *args, **kwargs)
  monkeypatch.setattr(loop, "compile_train_step", spy)
  return seen


@pytest.mark.slow
def test_stages_compile_once_each_and_resume_inside_either_stage_exactly(tmp_path, capsys,
                                                                         compiles):
  # The unbroken run saves checkpoints 2 (stage 1), 4 (stage 2, one step in) and 6.
  ref = tmp_path / "unbroken"
  args = ["train", "--config", CFG, "--workdir", ref, *STAGES, "--config.checkpoint_every=2"]
  assert cli(*args) == 0
  out = capsys.readouterr().out
  assert "stage 1/2: patch 16, global batch 16, steps 1-3" in out
  assert "stage 2/2: patch 24, global batch 8, steps 4-6" in out
  assert compiles == [(16, 16, (16, 16, 16, 3)), (24, 8, (8, 24, 24, 3))]
  want = losses(ref)
  assert sorted(want) == [1, 2, 3, 4, 5, 6]

  wd = tmp_path / "resumed"
  shutil.copytree(ref, wd)
  args[args.index(ref)] = wd
  shutil.rmtree(wd / "checkpoints" / "6")
  (wd / "metrics.jsonl").unlink()  # only what the resumed runs log is compared
  capsys.readouterr()
  compiles.clear()
  assert cli(*args) == 0
  assert "resumed from checkpoint step 4" in capsys.readouterr().out
  assert compiles == [(24, 8, (8, 24, 24, 3))]  # straight into stage 2
  got = losses(wd)
  assert sorted(got) == [5, 6]
  for s in got:
    assert _rel(got[s], want[s]) < 1e-6, (s, got[s], want[s])

  for s in (4, 6):
    shutil.rmtree(wd / "checkpoints" / str(s))
  (wd / "metrics.jsonl").unlink()
  capsys.readouterr()
  assert cli(*args) == 0
  assert "resumed from checkpoint step 2" in capsys.readouterr().out
  got = losses(wd)
  assert sorted(got) == [3, 4, 5, 6]  # the rest of stage 1, the switch, stage 2
  for s in got:
    assert _rel(got[s], want[s]) < 1e-6, (s, got[s], want[s])

  # A resume may not rewrite a stage already begun, but may extend the current one.
  capsys.readouterr()
  rc = cli("train", "--config", CFG, "--workdir", wd, *MICRO, "--config.batch_size=16",
           "--config.stages=((3,16,16),(5,32,8))", "--config.num_steps=8",
           "--config.log_every=1")
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "'stages'" not in err[0] and "stages (" in err[0], err
  assert cli("train", "--config", CFG, "--workdir", wd, *MICRO, "--config.batch_size=16",
             "--config.stages=((3,16,16),(5,24,8))", "--config.num_steps=8",
             "--config.log_every=1") == 0
  assert "resumed from checkpoint step 6" in capsys.readouterr().out
  assert sorted(losses(wd))[-2:] == [7, 8]
