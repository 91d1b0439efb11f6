"""The one train loop: determinism across device layouts and processes, resume after
kill -9, SIGTERM, a lost peer, metrics and TensorBoard output (divergence, corrupted
checkpoints, locks, signals and bad inputs: tests/test_reliability_*.py)."""
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

from helpers import (MICRO, REPO, env, jisp_cmd, losses, raw_lines, run_jisp, trainer_pids,
                     wait_for_step)

CFG = "configs/ddpm_tiny.py"


def _rel(a, b):
  return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("one_dev")
  run_jisp("train", "--config", CFG, "--workdir", str(wd), *MICRO,
           "--config.num_steps=5", "--config.log_every=1", "--config.checkpoint_every=100",
           devices=1)
  return wd


def test_metrics_jsonl_and_tensorboard(one_device_run):
  recs = raw_lines(one_device_run)
  train = [r for r in recs if "loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
  for r in train:
    for k in ("loss", "grad_norm", "lr", "steps_per_s", "patches_per_s", "cpu_s"):
      assert k in r and isinstance(r[k], float)
  cpu = [r["cpu_s"] for r in train]
  assert cpu[0] > 0 and all(b > a for a, b in zip(cpu, cpu[1:]))  # each step costs CPU
  assert any("eval/loss" in r for r in recs)
  # The event file is readable by TensorFlow's own reader and holds the same losses.
  import tensorflow as tf
  ev = list((one_device_run / "tensorboard").glob("events.out.tfevents.*"))
  assert len(ev) == 1
  seen = {}
  for e in tf.compat.v1.train.summary_iterator(str(ev[0])):
    for v in e.summary.value:
      if v.tag == "loss":
        seen[e.step] = v.simple_value
  assert seen.keys() == {1, 2, 3, 4, 5}
  for r in train:
    assert _rel(seen[r["step"]], r["loss"]) < 1e-6


def test_micro_batched_steps_are_the_same_on_1_and_8_devices(tmp_path):
  # micro_batch is global, so every layout draws the same keys for the same examples
  args = [*MICRO, "--config.batch_size=16", "--config.micro_batch=8", "--config.num_steps=3",
          "--config.log_every=1", "--config.checkpoint_every=100"]
  run_jisp("train", "--config", CFG, "--workdir", str(tmp_path / "one"), *args, devices=1)
  run_jisp("train", "--config", CFG, "--workdir", str(tmp_path / "eight"), *args, devices=8)
  a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
  assert sorted(a) == [1, 2, 3]
  for s in (1, 2, 3):
    assert _rel(b[s], a[s]) < 1e-4, (s, b[s], a[s])


def _train_args(wd, steps=10):
  return ["train", "--config", CFG, "--workdir", str(wd), *MICRO, f"--config.num_steps={steps}",
          "--config.log_every=1", "--config.checkpoint_every=2"]


def test_resume_after_kill_9_matches_uninterrupted(tmp_path):
  ref_wd = tmp_path / "ref"
  run_jisp(*_train_args(ref_wd))
  ref = losses(ref_wd)
  assert sorted(ref) == list(range(1, 11))
  # Checkpoints every 2 steps, keep 3: only the newest survive.
  assert sorted(int(p.name) for p in (ref_wd / "checkpoints").iterdir() if p.name.isdigit()) == [6, 8, 10]

  wd = tmp_path / "killed"
  proc = subprocess.Popen(jisp_cmd(*_train_args(wd)), env=env(2), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_step(wd, 5, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Re-run the very same command: it must resume from the newest complete checkpoint.
  p = run_jisp(*_train_args(wd))
  resumed = [r for r in raw_lines(wd) if r.get("event") == "resume"]
  assert len(resumed) == 1
  start = resumed[0]["step"]
  assert start in (2, 4) and "resumed from checkpoint step" in p.stdout
  assert "skipped damaged checkpoint" not in p.stderr  # the kill left nothing half-valid
  after = losses(wd)
  for s in range(start + 1, 11):
    assert _rel(after[s], ref[s]) < 1e-6, (s, after[s], ref[s])


def test_sigterm_writes_checkpoint_and_exits_zero(tmp_path):
  wd = tmp_path / "term"
  args = _train_args(wd, steps=10_000)
  args[args.index("--config.checkpoint_every=2")] = "--config.checkpoint_every=1000"
  proc = subprocess.Popen(jisp_cmd(*args), env=env(2), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_step(wd, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM received" in out
  assert (wd / "status").read_text() == "preempted\n"  # launch/slurm.sbatch requeues
  steps = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 1000
  # ... and that checkpoint resumes.
  p = run_jisp(*args[:-5], *MICRO, f"--config.num_steps={steps[0] + 1}",
               "--config.log_every=1", "--config.checkpoint_every=1000")
  assert f"resumed from checkpoint step {steps[0]}" in p.stdout


def test_lost_peer_stops_the_run_with_one_line_and_keeps_checkpoints(tmp_path):
  wd = tmp_path / "lost"
  proc = subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "2", CFG, str(wd), *MICRO,
       "--config.num_steps=10000", "--config.log_every=1", "--config.checkpoint_every=2"],
      env=env(2, JISP_PYTHON=os.sys.executable, JISP_DEVICES_PER_PROCESS=1, JISP_STOP_GRACE=2),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()  # wait until a checkpoint is complete (Orbax renames it into place)
  while not any(p.name.isdigit() for p in (wd / "checkpoints").glob("*")) if (wd / "checkpoints").exists() else True:
    assert proc.poll() is None and time.time() - t0 < 400
    time.sleep(0.2)
  written = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  # Kill process 1 the hard way: no chance to say goodbye to its peer.
  victims = trainer_pids(wd, 1)
  assert victims
  for pid in victims:
    os.kill(pid, signal.SIGKILL)
  t_kill = time.time()
  _, err = proc.communicate(timeout=300)
  assert proc.returncode != 0
  # process 0, stuck on a collective with its dead peer, is killed after the 2 s grace
  # rather than left to jax.distributed's heartbeat timeout (100 s)
  assert time.time() - t_kill < 60
  lines = [l for l in err.splitlines() if l.startswith("local_multiprocess:")]
  assert len(lines) == 1 and "process 1" in lines[0] and "stopping the other processes" in lines[0]
  kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert set(written) <= set(kept)
  # What was written survives the crash and restores (here in one process).
  from jisp.core.config import load
  from jisp.train import checkpoint, runs
  cfg = load(REPO / CFG, MICRO)
  step, _ = checkpoint.restore_params(str(wd), runs.build_task(cfg))
  assert step == kept[-1]


def _free_slurm_job_id() -> int:
  """A job id whose port (JAX's SLURM rule: id % 4096 + 61440) is free here."""
  import random
  import socket
  for _ in range(200):
    job = random.randrange(10_000, 10_000_000)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", job % 4096 + 61440))
        return job
      except OSError:
        continue
  pytest.skip("no free port in JAX's SLURM range")


def test_slurm_task_script_under_a_faked_two_task_allocation(one_device_run, tmp_path):
  """launch/slurm_task.sh as srun would start it (2 tasks on one node): jax.distributed
  finds the allocation from SLURM's variables alone. The 2 processes x 4 devices run as
  data 4 x fsdp 2, the bigger kernels split over fsdp (min_shard_size lowered so the
  micro U-Net has some), and the losses are one device's."""
  wd = tmp_path / "slurm"
  job = _free_slurm_job_id()
  procs = []
  for i in range(2):
    e = env(4, JISP_PYTHON=os.sys.executable, SLURM_JOB_ID=job, SLURM_NTASKS=2,
            SLURM_PROCID=i, SLURM_LOCALID=i, SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_NUM_NODES=1, SLURM_NODEID=0)
    procs.append(subprocess.Popen(
        ["bash", "launch/slurm_task.sh", CFG, str(wd), *MICRO, "--config.num_steps=5",
         "--config.log_every=1", "--config.checkpoint_every=100", "--config.mesh.fsdp=2",
         "--config.mesh.min_shard_size=1024"],
        env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert "devices=8 processes=2" in outs[0]
  split = re.search(r"mesh data 4 x fsdp 2: (\d+) of (\d+) parameter arrays", outs[0])
  assert split and 0 < int(split.group(1)) < int(split.group(2)), outs[0][-2000:]
  ref, other = losses(one_device_run), losses(wd)
  assert sorted(other) == [1, 2, 3, 4, 5]
  for s in range(1, 6):
    assert _rel(other[s], ref[s]) < 1e-5, (s, other[s], ref[s])
  assert (wd / "status").read_text() == "finished\n"  # launch/slurm.sbatch will not requeue
