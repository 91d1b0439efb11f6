"""`jisp bench profile` (op categories from a real jax.profiler trace) and `bench vs-torch`
(its checks before it runs anything)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import cli
from jisp.experiments import profile_step


def _conv_net(x, w, v):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y - jnp.mean(y, axis=(1, 2), keepdims=True)  # a reduction, as GroupNorm has
  return (y.reshape(-1, y.shape[-1]) @ v).sum()


def test_hlo_categories_and_trace_breakdown():
  x = jnp.ones((2, 16, 16, 8))
  w = jnp.full((3, 3, 8, 8), 0.01)
  v = jnp.full((8, 8), 0.1)
  compiled = jax.jit(jax.grad(_conv_net, argnums=(1, 2))).lower(x, w, v).compile()
  table = profile_step.parse_hlo(compiled.as_text())
  cats = {profile_step.category(i) for i in table.values()}
  assert "convolution" in cats and "matmul (attention, dense)" in cats
  parts = {profile_step.part(i) for i in table.values()}
  assert "backward" in parts and "backward (kernel gradients)" in parts

  def call(*a):
    jax.block_until_ready(compiled(*a))
    return a
  r = profile_step.breakdown(compiled, call, (x, w, v), steps=2)
  # every traced instruction is one of the module's, and the convolutions took time
  assert r["categories"].get("convolution", 0) > 0
  assert all(t["instruction"] in table for t in r["top"])
  assert r["ops_ms"] == pytest.approx(sum(r["categories"].values()), abs=0.1)
  assert r["ops_ms"] == pytest.approx(sum(r["parts"].values()), abs=0.1)
  # 8 channels are XLA's own convolutions, which run asynchronously: counted, not timed
  assert r["async_convolutions"] >= 1


def test_breakdown_counts_asynchronous_convolutions_by_library():
  from jisp.core import cpu_conv
  x, w, v = jnp.ones((2, 16, 16, 64)), jnp.full((3, 3, 64, 64), 0.01), jnp.full((64, 8), 0.1)
  counts = {}
  for lib in ("xla", "ynnpack"):
    fn = jax.jit(jax.grad(_conv_net, argnums=(1, 2)),
                 compiler_options=cpu_conv.compiler_options({"cpu_conv": lib}, "train"))
    compiled = fn.lower(x, w, v).compile()

    def call(*a, compiled=compiled):
      jax.block_until_ready(compiled(*a))
      return a
    counts[lib] = profile_step.breakdown(compiled, call, (x, w, v), steps=1)["async_convolutions"]
  if jax.default_backend() == "cpu":
    assert counts["ynnpack"] == 0 and counts["xla"] >= 2, counts


def test_category_rules():
  pure = {"opcode": "fusion", "ops": {"fusion", "transpose", "copy", "parameter"}, "op_name": ""}
  mixed = {"opcode": "fusion", "ops": {"fusion", "transpose", "multiply"}, "op_name": ""}
  conv = {"opcode": "fusion", "ops": {"fusion", "convolution", "add"},
          "op_name": "jit(step)/transpose(jvp(UNet))/conv1/conv_general_dilated"}
  assert profile_step.category(pure) == "layout transpose/copy"
  assert profile_step.category(mixed) == "elementwise"
  assert profile_step.category(conv) == "convolution"
  assert profile_step.part(conv) == "backward"
  wgrad = dict(conv, op_name="", window=32)
  assert profile_step.part(wgrad) == "backward (kernel gradients)"


def test_vs_torch_refuses_a_missing_peer(tmp_path, capsys):
  assert cli("bench", "vs-torch", "--peer-dir", str(tmp_path), "--peer-python",
             "/no/such/python") == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "peer_torch.py" in err and str(tmp_path) in err
  for name in ("peer_torch.py", "peer_torch_train.py"):
    (tmp_path / name).write_text("")
  assert cli("bench", "vs-torch", "--peer-dir", str(tmp_path), "--peer-python",
             "/no/such/python") == 2
  assert "/no/such/python" in capsys.readouterr().err
  assert cli("bench", "vs-torch", "--peer-dir", str(tmp_path), "--peer-python", str(
      tmp_path / "peer_torch.py"), "--what", "nap") == 2
  assert "nap" in capsys.readouterr().err


def test_profile_steps_writes_a_trace_of_those_steps(tmp_path):
  from helpers import MICRO, run_jisp
  wd = tmp_path / "run"
  p = run_jisp("train", "--config", "configs/ddpm_tiny.py", "--workdir", str(wd), *MICRO,
               "--config.num_steps=3", "--config.log_every=1", "--config.checkpoint_every=100",
               "--config.profile_steps=2:3", devices=1)
  assert "profile of steps 2..3" in p.stdout
  traces = list((wd / "profile" / "process0").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  bad = run_jisp("train", "--config", "configs/ddpm_tiny.py", "--workdir",
                 str(tmp_path / "bad"), *MICRO, "--config.num_steps=3",
                 "--config.profile_steps=3:2", devices=1, check=False)
  assert bad.returncode == 2
  err = bad.stderr.strip()
  assert "\n" not in err and "profile_steps" in err


def test_vs_torch_medians_ratio_and_jisp_layout(tmp_path, monkeypatch):
  """The summary of alternated rounds: per-tool medians, the faster peer, the ratio, and
  the devices / micro-batch of jisp's best figure (the tools' own runs are not made here:
  their JSON lines are given)."""
  import json as json_lib
  from jisp.experiments import vs_torch
  for name in ("peer_torch.py", "peer_torch_train.py"):
    (tmp_path / name).write_text("")
  speeds = {"jisp": iter([2.0, 2.4]), "torch": iter([3.0, 3.2]), "compile": iter([2.5, 4.0])}

  def lines(cmd):
    tool = "jisp" if "jisp" in cmd else ("compile" if "--compile" in cmd else "torch")
    s = next(speeds[tool])
    if tool == "jisp":  # bench train: 1 device and 2 devices, the best counts
      return [{"patches_per_s": s / 2, "devices": 1, "micro_batch": 4},
              {"patches_per_s": s, "devices": 2, "micro_batch": 4}]
    return [{"patches_per_s": s}]
  monkeypatch.setattr(vs_torch, "_json_lines", lines)
  out = []
  (summary,) = vs_torch.compare(["train"], peer_dir=str(tmp_path),
                                peer_python=str(tmp_path / "peer_torch.py"), emit=out.append)
  assert summary["jisp"] == 2.2 and summary["torch"] == 3.1 and summary["torch.compile"] == 3.25
  assert summary["faster_peer"] == "torch.compile" and summary["ratio"] == round(2.2 / 3.25, 3)
  rounds = [json_lib.loads(x) for x in out[:-1]]
  jisp = [r for r in rounds if r["tool"] == "jisp"]
  assert [r["speed"] for r in jisp] == [2.0, 2.4]
  assert all(r["devices"] == 2 and r["micro_batch"] == 4 for r in jisp)
  assert all("devices" not in r for r in rounds if r["tool"] != "jisp")
  # every figure names the CPU it was measured on
  assert all("cpu_model" in r and "cpu_flags" in r for r in rounds + [summary])
