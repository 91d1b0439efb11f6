"""Config cpu_conv: which XLA:CPU library a compiled program's convolutions run on."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jisp.core import config as config_lib
from jisp.core import cpu_conv
from jisp.core.errors import ConfigError

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's libraries")


def _convs_by_library(hlo: str) -> dict:
  """{"ynnpack": n, "xla": m}: the convolutions of an optimised HLO module, by whether a
  YNNPACK fusion runs them."""
  comps, current = {}, None
  ynn_called = set()
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      comps[current] = []
      continue
    if current is not None:
      comps[current].append(line)
      m = re.search(r"%?ynn_fusion[\w.]*\s*=.*calls=%?([\w.\-]+)", line)
      if m:
        ynn_called.add(m.group(1))
  out = {"ynnpack": 0, "xla": 0}
  for name, lines in comps.items():
    n = sum(" convolution(" in ln for ln in lines)
    out["ynnpack" if name in ynn_called else "xla"] += n
  return out


def _probe(x, w, a, b):
  """A convolution, a dot with elementwise work and a reduction: every kind of op the
  YNNPACK option decides about."""
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y, jnp.sum(jnp.tanh(a @ b + 1.0), axis=0), jnp.sum(a * a, axis=1)


def _probe_args():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((2, 16, 16, 64)), jnp.float32),
          jnp.asarray(rng.standard_normal((3, 3, 64, 64)), jnp.float32),
          jnp.asarray(rng.standard_normal((256, 256)), jnp.float32),
          jnp.asarray(rng.standard_normal((256, 256)), jnp.float32))


def _cfg(value=None):
  over = [] if value is None else [f"--config.cpu_conv={value}"]
  return config_lib.load("jisp/configs/ddpm_tiny.py", over)


def test_auto_is_xla_for_training_and_ynnpack_for_inference():
  cfg = _cfg()
  assert cfg.cpu_conv == "auto"
  assert cpu_conv.library(cfg, "train") == "xla"
  assert cpu_conv.library(cfg, "infer") == "ynnpack"
  for value in ("xla", "ynnpack"):
    assert {cpu_conv.library(_cfg(value), p) for p in ("train", "infer")} == {value}
  # off the CPU nothing is set, whatever the choice
  assert cpu_conv.compiler_options(_cfg("xla"), "train", backend="gpu") == {}
  assert cpu_conv.compiler_options(cfg, "infer", backend="cpu") == {}
  assert cpu_conv.compiler_options(cfg, "train", backend="cpu") == {
      cpu_conv.YNN_FUSION_OPTION: cpu_conv.YNN_WITHOUT_CONVOLUTION}


def test_bad_value_names_the_key():
  with pytest.raises(ConfigError, match="config key 'cpu_conv': 'eigen'"):
    _cfg("eigen")


@cpu_only
def test_the_option_moves_only_the_convolutions_off_ynnpack():
  """Against the installed jaxlib: its default hands the convolution to YNNPACK; the
  option keeps every other YNNPACK fusion of the default and runs the convolution on
  XLA's own kernels, with the same values up to summation order."""
  args = _probe_args()
  default = jax.jit(_probe).lower(*args).compile().as_text()
  ours = jax.jit(_probe, compiler_options=cpu_conv.compiler_options(_cfg(), "train")).lower(
      *args).compile().as_text()
  assert _convs_by_library(default) == {"ynnpack": 1, "xla": 0}
  assert _convs_by_library(ours) == {"ynnpack": 0, "xla": 1}
  assert ours.count("ynn_fusion =") + ours.count("ynn_fusion.") > 0
  n_ynn = lambda text: len(re.findall(r"^\s*(?:ROOT\s+)?%?ynn_fusion[\w.]*\s*=", text, re.M))
  assert n_ynn(ours) == n_ynn(default) - 1
  ref = jax.jit(_probe)(*args)
  got = jax.jit(_probe, compiler_options=cpu_conv.compiler_options(_cfg(), "train"))(*args)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@cpu_only
def test_train_and_eval_steps_compile_with_the_configs_library():
  from jisp.core import sharding
  from jisp.train import loop, optim, runs
  # 32 channels: narrower convolutions are XLA's own whatever the option
  small = ["--config.model.base_channels=32", "--config.model.num_groups=4",
           "--config.model.channel_mults=(1,2)", "--config.model.attention_stages=(False,True)",
           "--config.data.patch_size=16", "--config.batch_size=2"]
  cfg = config_lib.load("jisp/configs/ddpm_tiny.py", small)
  task = runs.build_task(cfg)
  tx, lr_fn = optim.make_optimizer(cfg.optim, cfg.num_steps)
  mesh = sharding.make_mesh(1)
  shapes = jax.eval_shape(lambda k: loop.state_lib.create(task, tx, k), jax.random.PRNGKey(0))
  state_sh = loop.state_shardings(shapes, cfg, mesh)
  batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype)
           for k, s in task.batch_spec(cfg.batch_size).items()}
  g = jax.eval_shape(loop.guard.init)
  step = loop.compile_train_step(task, tx, lr_fn, cfg, mesh, state_sh, 0)
  counts = _convs_by_library(step.lower(shapes, batch, g).compile().as_text())
  assert counts["ynnpack"] == 0 and counts["xla"] > 10, counts
  # evaluation is forward-only: YNNPACK's, as the jaxlib's default compiles it
  args = (shapes.params, batch, jax.random.PRNGKey(0))
  ev = _convs_by_library(loop.compile_eval_step(task, cfg).lower(*args).compile().as_text())
  plain = _convs_by_library(jax.jit(loop.make_eval_step(task)).lower(*args).compile().as_text())
  assert ev == plain and ev["ynnpack"] > 0, (ev, plain)


def test_bench_convs_finds_every_convolution_and_times_both_libraries():
  from jisp.experiments import conv_layers
  from jisp.train import runs
  cfg = config_lib.load("jisp/configs/ddpm_tiny.py", [
      "--config.model.base_channels=8", "--config.model.num_groups=4",
      "--config.model.channel_mults=(1,2)", "--config.model.attention_stages=(False,True)",
      "--config.data.patch_size=16"])
  task = runs.build_task(cfg)
  found = conv_layers.network_convs(task, batch=3)
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  kernels = [k for k in jax.tree.leaves(params) if k.ndim == 4]
  assert sum(found.values()) == len(kernels)  # each conv module runs once per evaluation
  assert all(x[0] == 3 and x[1:3] in ((16, 16), (8, 8)) for x, *_ in found)
  assert {w for _, w, *_ in found} == {tuple(k.shape) for k in kernels}
  (xs, ws, st, pads, dtype), _ = next(iter(found.items()))
  ms = conv_layers.time_conv(xs, ws, st, pads, dtype, repeats=1, calls=1)
  assert set(ms) == {"xla", "ynnpack"}
  assert all(set(p) == set(conv_layers.PARTS) and min(p.values()) > 0 for p in ms.values())
  # the whole bench, on a network of one convolution: one line for it, one per library
  recs = conv_layers.bench_convs(_OneConv(), batch=2, repeats=1)
  assert [r["bench"] for r in recs] == ["convs", "convs_total", "convs_total"]
  conv, *totals = recs
  assert conv["count"] == 1 and conv["x"] == [2, 8, 8, 16] and conv["kernel"] == [3, 3, 16, 32]
  for t in totals:
    lib = t["library"]
    assert t["convolutions"] == 1 and t["fwd_ms"] == round(conv[f"{lib}_fwd_ms"], 1)
    assert t["train_ms"] >= t["fwd_ms"] and "cpu_model" in t


class _OneConv:
  """A task whose network is one 3x3 convolution (what bench_convs reads of a task)."""

  def init_params(self, key):
    return {"w": jax.random.normal(key, (3, 3, 16, 32))}

  def network(self, params):
    fn = lambda p, x: lax.conv_general_dilated(  # noqa: E731
        x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return fn, (params, jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32))


def test_a_resume_may_change_how_convolutions_run_but_not_the_model():
  from jisp.train import resume
  saved = resume.config_dict(_cfg())
  for override in ("--config.cpu_conv=ynnpack", "--config.model.conv_kernel_grad=matmul",
                   "--config.model.attention_grad=xla"):
    new = resume.config_dict(config_lib.load("jisp/configs/ddpm_tiny.py", [override]))
    assert resume.differing_keys(saved, new) == [], override
  # a run saved before the key existed resumes under any value of it
  old = {k: v for k, v in saved.items() if k != "cpu_conv"}
  assert resume.differing_keys(old, resume.config_dict(_cfg("xla"))) == []
  wider = resume.config_dict(config_lib.load("jisp/configs/ddpm_tiny.py",
                                             ["--config.model.base_channels=64"]))
  assert resume.differing_keys(saved, wider) == ["model.base_channels"]
