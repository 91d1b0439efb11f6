"""Shared helpers for tests that run `jisp` in subprocesses."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Tests run tiny shapes, where XLA:CPU spends far longer compiling than running: LLVM
# without its optimisation passes, XLA's older (elemental) fusion emitters and one LLVM
# module per program compile several times faster (and the results are the same to within
# the tests' tolerances). Every jax process of the suite gets them, the in-process one
# (conftest) and the subprocesses (env below, and through the launch scripts, which keep
# the caller's XLA_FLAGS).
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"

# The smallest U-Net that still has every part (attention, down/up-sampling, skips):
# keeps each compile to seconds on a 2-core CPU.
MICRO = [
    "--config.model.base_channels=8", "--config.model.num_groups=4",
    "--config.batch_size=8", "--config.data.patch_size=16",
    "--config.eval_every=1000", "--config.eval_batches=1",
]


def env(devices: int = 2, **extra) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = xla_flags(devices)
  e["JAX_PLATFORMS"] = "cpu"
  e.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax_cache"))
  e.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  e["PYTHONUNBUFFERED"] = "1"
  e.update({k: str(v) for k, v in extra.items()})
  return e


def jisp_cmd(*args) -> list[str]:
  return [sys.executable, "-m", "jisp", *args]


def run_jisp(*args, devices=2, timeout=600, check=True, **extra_env):
  p = subprocess.run(jisp_cmd(*args), env=env(devices, **extra_env), cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  if check and p.returncode != 0:
    raise AssertionError(f"jisp {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
  return p


def losses(workdir) -> dict[int, float]:
  from jisp.train.metrics_log import read_metrics
  return {r["step"]: r["loss"] for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
          if "loss" in r}


def raw_lines(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(l) for l in f if l.strip()]


def options(task, **kw):
  """The task's resolved PredictOptions with these fields set (sampler, steps, eta, ...)."""
  from jisp.tasks.base import PredictOptions
  return task.resolve_options(PredictOptions(**kw))


def cli(*argv) -> int:
  """`jisp ARGV` in this process (exit status); what it prints goes to capsys."""
  from jisp.cli import main
  return main([str(a) for a in argv])


def wait_for_step(wd, step, proc, timeout=400):
  """Until training in `wd` has logged `step` (AssertionError if `proc` exits first)."""
  import time
  t0 = time.time()
  while time.time() - t0 < timeout:
    if (pathlib.Path(wd) / "metrics.jsonl").exists() and step in losses(wd):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.2)
  raise AssertionError("timed out waiting for training")


def trainer_pids(workdir, process_id: int) -> list[int]:
  """Pids of the `jisp train` processes of `workdir` started as process `process_id`
  (JISP_PROCESS_ID in their environment). The workdir in the command line keeps another
  test's multi-process run, which may be running in a parallel worker, out of it."""
  out = subprocess.run(["pgrep", "-f", "jisp train"], capture_output=True, text=True)
  marker = f"JISP_PROCESS_ID={process_id}".encode()
  found = []
  for pid in out.stdout.split():
    try:
      environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
      cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
      continue
    if marker in environ and str(workdir).encode() in cmdline:
      found.append(int(pid))
  return found
