"""`jisp bench predict` (alias `bench sample`): runs with jisp.data / TensorFlow / rawpy
unimportable, reports consistent numbers, counts the paper U-Net's FLOPs like the PyTorch
peer, extrapolates long samplers, and restores a trained run."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import MICRO, REPO, env, run_jisp

CFG = "configs/ddpm_tiny.py"

# Runs the bench on what looks like an accelerator image without jisp.data, TensorFlow and
# rawpy: a None entry in sys.modules makes `import x` fail and find_spec(x) say "absent".
_BLOCKED_RUN = r"""
import sys
BLOCKED = ("jisp.data", "tensorflow", "tensorflow_datasets", "rawpy")
for name in BLOCKED:
  sys.modules[name] = None
from jisp.cli import main
rc = main(["bench", "sample", *sys.argv[1:]])
bad = sorted(m for m, v in sys.modules.items() if v is not None and (
    m.startswith("jisp.data") or m.split(".")[0] in ("tensorflow", "rawpy")))
assert not bad, bad
sys.exit(rc)
"""


def _bench(*args, devices=2):
  p = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, *map(str, args)], env=env(devices),
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  return p


def _json_line(p):
  assert p.returncode == 0, p.stderr[-2000:]
  lines = [l for l in p.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, p.stdout
  return json.loads(lines[0])


def test_bench_random_init_without_data_stack():
  r = _json_line(_bench("--config", CFG, "--sampler", "ddim", "--steps", "3", "--batch", "4",
                        "--json", "--matmul-n", "256", "--repeats", "2", *MICRO))
  assert r["sampler"] == "ddim" and r["nfe"] == 3 and r["batch"] == 4 and r["devices"] == 2
  assert r["patch"] == 16 and r["params"] == "random init" and not r["extrapolated"]
  assert r["net_chunk"] == 4  # 'auto' on CPU is 2 per device: a batch of 4 is one call
  assert len(r["seconds_runs"]) == 2 and r["seconds"] == float(np.median(r["seconds_runs"]))
  assert r["compile_s"] > 0 and r["seconds"] > 0
  assert abs(r["patch_nfe_per_s"] - 4 * 3 / r["seconds"]) < 1e-6 * r["patch_nfe_per_s"]
  assert abs(r["achieved_gflops"] - r["gflop_per_nfe_patch"] * 12 / r["seconds"]) < 1e-6 * \
      r["achieved_gflops"]
  assert r["matmul_ceiling_gflops"] > 0
  assert abs(r["fraction_of_ceiling"] - r["achieved_gflops"] / r["matmul_ceiling_gflops"]) < 1e-9
  # 2012x1324 on the regular grid of 16-pixel patches: 126 x 83 tiles
  assert r["image_size"] == "2012x1324" and r["patches_per_image"] == 126 * 83
  assert r["batches_per_image"] == -(-126 * 83 // 4)
  assert abs(r["seconds_per_image"] - r["seconds"] * r["batches_per_image"]) < 1e-9


def test_bench_net_chunk_option():
  r = _json_line(_bench("--config", CFG, "--sampler", "ddim", "--steps", "2", "--batch", "8",
                        "--net-chunk", "4", "--json", "--matmul-n", "128", "--repeats", "1",
                        *MICRO))
  assert r["net_chunk"] == 4 and r["batch"] == 8
  p = _bench("--config", CFG, "--sampler", "ddim", "--steps", "2", "--batch", "8",
             "--net-chunk", "3", "--json", *MICRO)
  assert p.returncode == 2 and p.stdout == "", p.stderr
  err = p.stderr.strip().splitlines()
  assert len(err) == 1 and "net chunk 3 must be a positive multiple of the 2 devices" in err[0]


def test_bench_trained_run_and_extrapolated_ddpm(tmp_path):
  wd = tmp_path / "run"
  run_jisp("train", "--config", CFG, "--workdir", str(wd), *MICRO, "--config.num_steps=2",
           "--config.log_every=1", "--config.checkpoint_every=100", devices=1)
  r = _json_line(_bench("--config", CFG, "--workdir", wd, "--sampler", "ddpm", "--batch", "2",
                        "--timed-nfe", "3", "--json", "--matmul-n", "256", "--repeats", "1",
                        "--warmup", "0"))
  assert r["params"].endswith("@2") and str(wd) in r["params"]
  assert r["nfe"] == 1000 and r["timed_nfe"] == 3 and r["extrapolated"]
  assert abs(r["seconds"] - r["seconds_runs"][0] * 1000 / 3) < 1e-9
  p = _bench("--config", CFG, "--sampler", "ddim", "--steps", "2", "--batch", "3", *MICRO)
  assert p.returncode == 2 and "not a multiple of the 2 devices" in p.stderr
  assert len(p.stderr.strip().splitlines()) == 1


def test_paper_unet_flops_match_the_pytorch_peer_count():
  """XLA's count for one 64x64 patch of the paper U-Net vs the diffusers peer's 12.23 GFLOP
  (FlopCounterMode, convs + matmuls + attention; XLA counts the same ops, 1 FMA = 2)."""
  from jisp.core.config import load
  from jisp.train.runs import build_task
  task = build_task(load(REPO / "configs/ddpm_fivek.py"))
  shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  gflop = task.network_flops(shapes) / 1e9
  assert abs(gflop - 12.23) / 12.23 < 0.05, gflop
  # one predict = NFE network evaluations
  from helpers import options
  assert task.predict_flops(shapes, options(task, sampler="ddim", steps=20)) == \
      pytest.approx(20 * gflop * 1e9)


def test_parse_size():
  from jisp.core.errors import OptionError
  from jisp.experiments import bench_predict
  assert bench_predict.parse_size("2012x1324") == (1324, 2012)
  with pytest.raises(OptionError, match="WIDTHxHEIGHT"):
    bench_predict.parse_size("big")
