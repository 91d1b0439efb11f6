"""Reliability of `jisp train` where a process must start, die or be signalled (issue 15):
two trainers on one workdir, kill -9 then re-run (stale lock), Ctrl-C, a multi-process run
whose peer never starts, and a disk that fills up during training. One trainer's life
covers the first three, to keep the start-ups few."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import (MICRO, REPO, env, jisp_cmd, losses, raw_lines, run_jisp, trainer_pids,
                     wait_for_step)

CFG = "configs/ddpm_tiny.py"


def _args(wd, steps=10_000, every=2):
  return ["train", "--config", CFG, "--workdir", str(wd), *MICRO, f"--config.num_steps={steps}",
          "--config.log_every=1", f"--config.checkpoint_every={every}"]


def _start(args, **extra_env):
  return subprocess.Popen(jisp_cmd(*args), env=env(2, **extra_env), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_resumed_steps(wd, n, proc, timeout=400):
  """Until the run that resumed last has logged `n` steps."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    recs = raw_lines(wd) if (wd / "metrics.jsonl").exists() else []
    marks = [i for i, r in enumerate(recs) if r.get("event") == "resume"]
    if marks and sum("loss" in r for r in recs[marks[-1]:]) >= n:
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.2)
  raise AssertionError("timed out waiting for training")


def _ckpts(wd):
  d = wd / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _error_lines(err):
  return [l for l in err.splitlines() if l.startswith("jisp train: error:")]


def test_second_trainer_stops_at_once_a_killed_ones_lock_is_taken_over_and_ctrl_c_saves(
    tmp_path):
  wd = tmp_path / "run"
  first = _start(_args(wd))
  try:
    wait_for_step(wd, 3, first)
    t0 = time.time()
    second = run_jisp(*_args(wd), check=False, timeout=300)
    lines = _error_lines(second.stderr)
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
    assert str(wd) in lines[0] and f"pid {first.pid}" in lines[0] and "host" in lines[0]
    assert "jisp train: task=" not in second.stdout  # stopped before building anything
    assert time.time() - t0 < 120
    assert first.poll() is None  # the first one is unaffected...
  finally:
    first.send_signal(signal.SIGKILL)  # ... until it is killed the hard way
    first.wait()
  steps = [r for r in losses(wd)]
  assert len(steps) == len(set(steps))  # nobody logged a step twice
  done = _ckpts(wd)
  assert done and (wd / "train.lock").exists()  # the dead trainer's lock file stays
  assert (wd / "status").read_text() == "running\n"  # a killed run is not "finished"

  # The next run takes the stale lock over and resumes; Ctrl-C then saves and exits 130.
  third = _start(_args(wd, every=1000))
  _wait_for_resumed_steps(wd, 2, third)
  third.send_signal(signal.SIGINT)
  out, err = third.communicate(timeout=300)
  assert f"resumed from checkpoint step {done[-1]}" in out
  assert third.returncode == 130, err[-2000:]
  said = [l for l in err.splitlines() if "interrupted" in l]
  assert len(said) == 1 and "checkpoint written at step" in said[0], err[-2000:]
  assert "Traceback" not in err
  step = int(said[0].split("checkpoint written at step ")[1].split(";")[0])
  assert step >= done[-1] + 2 and step in _ckpts(wd)
  assert (wd / "status").read_text() == "interrupted\n"
  p = run_jisp(*_args(wd, steps=step + 1, every=1000))
  assert f"resumed from checkpoint step {step}" in p.stdout


def _free_port():
  import socket
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()
  return port


@pytest.mark.parametrize("pid,needle", [
    (0, "process 1 of 2 never arrived at the coordinator"),
    (1, "process 1: could not reach process 0 at the coordinator"),
])
def test_a_peer_that_never_starts_is_named_after_the_startup_timeout(tmp_path, pid, needle):
  t0 = time.time()
  p = run_jisp(*_args(tmp_path / "mp", steps=2), "--num-processes", "2", "--process-id", str(pid),
               "--coordinator", f"127.0.0.1:{_free_port()}", check=False, timeout=240,
               JISP_STARTUP_TIMEOUT=5)
  lines = _error_lines(p.stderr)
  assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
  assert needle in lines[0] and "within 5 s" in lines[0]
  assert time.time() - t0 < 200


def _mount_tmpfs(path, size):
  path.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")


def test_disk_full_during_training_is_one_line_and_resumes_after_freeing(tmp_path):
  mnt = tmp_path / "small"
  _mount_tmpfs(mnt, "6m")  # room for two or three checkpoints of the micro U-Net
  try:
    wd = mnt / "run"
    p = run_jisp(*_args(wd, steps=40, every=1), "--config.keep_checkpoints=40", check=False)
    lines = _error_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert "no space left on device" in lines[0] and "intact" in lines[0]
    assert "checkpoints" in lines[0] and "while writing checkpoint step" in lines[0]
    assert "Traceback" not in p.stderr and "ERROR:absl" not in p.stderr
    other = [l for l in p.stderr.splitlines() if not l.startswith(("step ", "jisp train:"))]
    assert not other, other[:5]
    kept = _ckpts(wd)
    assert kept and not list((wd / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    # Free space (grow the file system); the same command resumes from the newest one.
    subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
    p = run_jisp(*_args(wd, steps=40, every=20), "--config.keep_checkpoints=40")
    assert f"resumed from checkpoint step {kept[-1]}" in p.stdout
    assert max(losses(wd)) == 40
  finally:
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


_FILL_AND_LOG = r"""
import sys
from jisp.train.metrics_log import MetricsLog
mnt = sys.argv[1]
log = MetricsLog(mnt + "/run", enabled=True, total_steps=9)
log.write(1, {"loss": 0.5})
log.write(2, {"loss": 0.25})
with open(mnt + "/ballast", "wb", buffering=0) as f:  # fill the disk
  try:
    while True:
      f.write(b"x" * 4096)
  except OSError:
    pass
try:  # more than the slack left in the files' last pages
  log.write(3, {f"metric_{i}": 0.125 for i in range(1000)})
except OSError as e:
  print("raised:", e.filename, e.strerror)
log.close()
"""


def test_metrics_written_before_the_disk_filled_are_on_disk_and_nothing_fails_at_exit(tmp_path):
  """TensorBoard events are written in the loop, not by a thread that flushes again at exit
  (a traceback after the one-line error, seen on CI)."""
  mnt = tmp_path / "tiny"
  _mount_tmpfs(mnt, "1m")
  try:
    p = subprocess.run([sys.executable, "-c", _FILL_AND_LOG, str(mnt)], env=env(1), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr[-3000:]
    raised = p.stdout.strip().splitlines()
    assert len(raised) == 1 and raised[0].startswith("raised:") and "No space left" in raised[0]
    assert str(mnt / "run") in raised[0]
    import tensorflow as tf
    ev = list((mnt / "run" / "tensorboard").glob("events.out.tfevents.*"))
    steps = [e.step for e in tf.compat.v1.train.summary_iterator(str(ev[0]))
             for v in e.summary.value if v.tag == "loss"]
    assert steps[:2] == [1, 2]
    assert [r["step"] for r in raw_lines(mnt / "run")][:2] == [1, 2]
  finally:
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_everywhere(tmp_path):
  """Preemption (issue 16): the signal reaches process 1 only; both processes agree at
  the next step boundary, save that step, exit 0; the re-run resumes to the losses of an
  unbroken run."""
  steps = 12
  ref = tmp_path / "unbroken"
  run_jisp(*_args(ref, steps=steps, every=1000), devices=4)
  wd = tmp_path / "mp"
  overrides = _args(wd, steps=steps, every=1000)[5:]  # after train --config C --workdir W
  mp_env = env(2, JISP_PYTHON=sys.executable, JISP_DEVICES_PER_PROCESS=2)
  cmd = ["bash", "launch/local_multiprocess.sh", "2", CFG, str(wd), *overrides]
  proc = subprocess.Popen(cmd, env=mp_env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    wait_for_step(wd, 2, proc)
    victims = trainer_pids(wd, 1)
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  said = [l for l in out.splitlines() if "SIGTERM received; checkpoint written at step" in l]
  assert len(said) == 1, out[-2000:]  # process 0 speaks for both
  stop = int(said[0].split("at step ")[1].split(",")[0])
  assert 2 <= stop < steps and _ckpts(wd) == [stop]
  assert (wd / "status").read_text() == "preempted\n"
  p = subprocess.run(cmd, env=mp_env, cwd=REPO, capture_output=True, text=True, timeout=400)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"resumed from checkpoint step {stop}" in p.stdout
  assert (wd / "status").read_text() == "finished\n"
  want, got = losses(ref), losses(wd)
  assert sorted(got) == list(range(1, steps + 1))
  for s in range(stop + 1, steps + 1):
    assert abs(got[s] - want[s]) <= 1e-4 * abs(want[s]), (s, got[s], want[s])
