"""The papers' exact sampler settings reachable from config and CLI (one typed
PredictOptions), the Table 3 preset, DiffRAW's condition ablation, colour-pluggable c and
x_93 protocol, and `jisp eval` of a flow run at the run's own JPEG settings."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import MICRO, cli, options
from jisp.core.config import load
from jisp.core.errors import ConfigError, OptionError
from jisp.tasks import ddpm as ddpm_lib
from jisp.tasks.base import PRESETS, PredictOptions
from jisp.train.runs import build_task


def test_paper_config_samples_as_the_paper_and_tiny_keeps_its_own():
  paper = build_task(load("ddpm_fivek.py"))
  o = options(paper)
  assert (o.sampler, o.steps, o.variance, o.clip_x0) == ("ddpm", None, "beta", True)
  assert ddpm_lib.sampler_kwargs(o) == {"variance": "beta"}
  tiny = build_task(load("ddpm_tiny.py", MICRO))
  assert options(tiny, sampler="ddpm").variance == "beta_tilde"
  o = options(tiny)  # ddim 50, trailing grid
  assert (o.sampler, o.steps, o.spacing, o.variance, o.order) == ("ddim", 50, "trailing", None,
                                                                   None)
  o = options(tiny, sampler="dpm_solver", steps=7, order=2, skip="time_uniform",
              denoise_to_zero=False)
  assert ddpm_lib.sampler_kwargs(o) == {"num_steps": 7, "order": 2, "skip": "time_uniform",
                                        "denoise_to_zero": False}
  assert tiny.nfe(o) == 7 and tiny.nfe(o.replace(denoise_to_zero=True)) == 8


@pytest.mark.parametrize("kw,needle", [
    (dict(sampler="ddim", variance="beta"), "variance is a setting of ddpm, not of ddim"),
    (dict(sampler="ddpm", spacing="leading"), "spacing is a setting of ddim"),
    (dict(sampler="ddim", skip="logSNR"), "skip is a setting of dpm_solver"),
    (dict(sampler="dpm_solver", steps=5, order=4), "bad value for option order: 4"),
    (dict(sampler="ddim", steps=0), "needs steps >= 1"),
])
def test_settings_that_do_not_apply_are_one_line_errors(kw, needle):
  tiny = build_task(load("ddpm_tiny.py", MICRO))
  with pytest.raises(OptionError, match=needle):
    options(tiny, **kw)
  with pytest.raises(OptionError, match="bad value for config key 'sampling.spacing'"):
    options(build_task(load("ddpm_tiny.py", MICRO + ["--config.sampling.spacing=middle"])))


def test_table3_preset_is_the_published_samplers():
  tiny = build_task(load("ddpm_tiny.py", MICRO))
  ddim = tiny.resolve_options(PRESETS["paper"]["ddim"])
  assert (ddim.steps, ddim.eta, ddim.spacing, ddim.clip_x0) == (200, 0.0, "leading", False)
  dpm = tiny.resolve_options(PRESETS["paper"]["dpm_solver"])
  assert (dpm.steps, dpm.order, dpm.skip, dpm.denoise_to_zero, dpm.clip_x0) == (
      20, 3, "logSNR", False, False)
  assert tiny.nfe(dpm) == 20
  ddpm = tiny.resolve_options(PRESETS["paper"]["ddpm"])
  assert (ddpm.variance, ddpm.clip_x0, tiny.nfe(ddpm)) == ("beta", True, 1000)
  # the leading grid reaches the sampler: it is the original DDIM code's 1 + k * (T // N)
  from jisp.diffusion import samplers
  ts = samplers.ddim_timesteps(tiny.schedule, num_steps=200, spacing="leading")
  assert ts[0] == 996 and ts[-2] == 1
  # unclipped means the clip wrapper is off: predict differs from the clipped one
  params = jax.jit(tiny.init_params)(jax.random.PRNGKey(0))
  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 3)), jnp.float32)
  o = options(tiny, sampler="ddim", steps=3)
  a = tiny.predict(params, x, jax.random.PRNGKey(1), o)
  b = tiny.predict(params, x, jax.random.PRNGKey(1), o.replace(clip_x0=False))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_dtdm_condition_ablation_and_colour_pluggable_c():
  extra = ["--config.model.base_channels=8", "--config.model.num_groups=4",
           "--config.data.patch_size=16"]
  rng = np.random.default_rng(0)
  b = {"rgb": jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32),
       "raw": jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)}
  for cond, ch in (("w+c", 9), ("w", 6), ("none", 3)):
    task = build_task(load(f"dtdm_rgb2raw_tiny.py:condition={cond}", extra))
    assert task.config.model.in_channels == ch
    p = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    convs = [leaf.shape for leaf in jax.tree.leaves(p) if leaf.ndim == 4]
    assert any(s[2] == ch for s in convs)  # the input conv sees exactly these channels
    loss, _ = jax.jit(task.loss)(p, b, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss))
  with pytest.raises(ConfigError, match="model.in_channels"):
    build_task(load("dtdm_rgb2raw_tiny.py:condition=w", extra + ["--config.model.in_channels=9"]))
  with pytest.raises(ConfigError, match="dtdm.color"):
    build_task(load("dtdm_rgb2raw_tiny.py:condition=w,color=upi", extra))

  # c reaches the network's c slot: x itself by default; with color=upi UPI's rendering
  # while x comes from the configured estimator (here a regression net G)
  from jisp.tasks.base import TaskInputs
  from jisp.tasks.dtdm import DTDMTask
  from jisp.tasks.regression import RegressionTask
  reg = RegressionTask(load("regression_rgb2raw_tiny.py", ["--config.model.base_channels=8",
                                                            "--config.model.num_groups=4"]))
  g = (reg, jax.jit(reg.init_params)(jax.random.PRNGKey(5)))
  seen, tasks = {}, {}
  for color in ("x", "upi"):
    cfg = load(f"dtdm_rgb2raw_tiny.py:color={color}",
               extra + ["--config.dtdm.estimator=regression", "--config.dtdm.estimator_workdir=G",
                        "--config.dtdm.upi_profile=mean"])
    task = tasks[color] = DTDMTask(cfg, TaskInputs(runs={"estimator": g}))
    apply = task.model.apply

    def spy(variables, inp, t, _color=color, _apply=apply, **kw):
      # the c slot, read out of the compiled sampler
      jax.debug.callback(lambda a: seen.__setitem__(_color, np.asarray(a)), inp[..., 6:9])
      return _apply(variables, inp, t, **kw)
    task.model = type("M", (), {"apply": staticmethod(spy)})()
    p = jax.jit(DTDMTask(load("dtdm_rgb2raw_tiny.py", extra)).init_params)(jax.random.PRNGKey(0))
    task.predict(p, b["rgb"], jax.random.PRNGKey(2), options(task, steps=1))
  x = tasks["x"].estimate(b["rgb"]) * 2 - 1
  np.testing.assert_allclose(tasks["upi"].estimate(b["rgb"]) * 2 - 1, x, atol=1e-6)  # same G
  np.testing.assert_allclose(seen["x"], x, atol=1e-5)
  upi_mean = DTDMTask(load("dtdm_rgb2raw_tiny.py", extra + ["--config.dtdm.estimator=upi",
                                                            "--config.dtdm.upi_profile=mean"]))
  np.testing.assert_allclose(seen["upi"], upi_mean.estimate(b["rgb"]) * 2 - 1, atol=1e-5)
  assert float(np.max(np.abs(seen["upi"] - seen["x"]))) > 1e-2


def test_dtdm_x93_protocol_starts_below_s():
  task = build_task(load("dtdm_rgb2raw_tiny.py", ["--config.model.base_channels=8",
                                                  "--config.model.num_groups=4"]))
  o = options(task, start_step=93)
  assert (o.steps, task.nfe(o)) == (93, 93)
  assert task.nfe(options(task, start_step=93, steps=10)) == 10
  with pytest.raises(OptionError, match="start_step must be in 1..s=100"):
    options(task, start_step=101)


def test_eval_of_a_flow_run_uses_its_jpeg_quality(tmp_path, capsys):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  raws = write_virtual_raw_dir(tmp_path / "raws", 2, seed=3, size=(48, 64))
  res = {}
  for q in (30, 90):
    wd = tmp_path / f"q{q}"
    assert cli("train", "--config", "configs/invisp_tiny.py", "--workdir", wd,
               "--config.model.growth=4", "--config.batch_size=8", "--config.data.patch_size=16",
               "--config.num_steps=2", f"--config.jpeg.quality={q}", "--config.log_every=1",
               "--config.eval_every=100", "--config.checkpoint_every=100") == 0
    assert cli("eval", "--workdir", wd, "--data", raws[0].parent, "--json") == 0
    res[q] = json.loads((wd / "eval" / "results.json").read_text())
  capsys.readouterr()
  assert res[30]["jpeg_quality"] == 30 and res[90]["jpeg_quality"] == 90
  assert res[30]["jpeg_subsampling"] == res[90]["jpeg_subsampling"] == "4:2:2"
  assert res[30]["bpp"] < 0.6 * res[90]["bpp"]
