"""FlowISPTask: the bidirectional loss, evaluation, training through the one loop, and the
exact inverse with trained parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, losses, options, raw_lines, run_jisp

from jisp.core.config import load
from jisp.core.errors import ConfigError
from jisp.tasks.flow_isp import FlowISPTask

TINY = REPO / "configs" / "invisp_tiny.py"
SMALL = ["--config.model.growth=4", "--config.batch_size=2", "--config.data.patch_size=16"]
TRAIN = ["--config.num_steps=60", "--config.eval_every=60", "--config.checkpoint_every=60",
         "--config.eval_batches=1", "--config.log_every=10"]


def small_task(*extra):
  return FlowISPTask(load(TINY, SMALL + list(extra)))


def batch(n=2, p=16, seed=0):
  from jisp.data.synthetic import SyntheticSource
  src = SyntheticSource(patch_size=p, local_batch=n, seed=seed)
  return {k: jnp.asarray(v) for k, v in src.next().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """60 steps of the tiny config through `jisp train` (2 fake CPU devices)."""
  wd = tmp_path_factory.mktemp("invisp_tiny")
  run_jisp("train", "--config", str(TINY), "--workdir", str(wd), *TRAIN)
  return wd


def test_task_passes_and_loss():
  task = small_task()
  spec = task.batch_spec(2)
  assert spec["raw"].shape == spec["rgb"].shape == (2, 16, 16, 3)
  p = jax.jit(task.init_params)(jax.random.PRNGKey(0))
  b = batch()
  fwd = jax.jit(lambda p, x: task.forward(p, x, clip=False))
  inv = jax.jit(task.flow.inverse)
  y = fwd(p, b["raw"])
  rgb = jnp.clip(y, 0.0, 1.0)
  np.testing.assert_array_equal(np.asarray(task.forward(p, b["raw"])), np.asarray(rgb))
  # exact inverse of the unclipped forward; predict is the clipped inverse
  assert float(jnp.max(jnp.abs(inv(p, y) - b["raw"]))) < 1e-4
  np.testing.assert_allclose(
      np.asarray(task.predict(p, b["rgb"], jax.random.PRNGKey(1), options(task))),
      np.clip(np.asarray(inv(p, b["rgb"])), 0, 1), atol=1e-6)
  assert task.nfe(options(task)) == 1
  # render is the clipped forward pass (what the InvISP eval protocol stores)
  np.testing.assert_array_equal(np.asarray(task.render(p, b["raw"])), np.asarray(rgb))

  (loss, aux), g = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
      p, b, jax.random.PRNGKey(2))
  # loss = rgb L1 + lambda * raw L1, recomputed by hand
  raw_hat = inv(p, jax.jit(task.jpeg_train)(rgb))
  want_raw = float(jnp.mean(jnp.abs(raw_hat - b["raw"])))
  want_rgb = float(jnp.mean(jnp.abs(rgb - b["rgb"])))
  np.testing.assert_allclose(float(aux["raw_l1"]), want_raw, rtol=1e-4)
  np.testing.assert_allclose(float(aux["rgb_l1"]), want_rgb, rtol=1e-4)
  np.testing.assert_allclose(float(loss), want_rgb + want_raw, rtol=1e-4)
  leaves = jax.tree.leaves(g)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
  for part in ("F", "G", "H", "conv1x1"):   # every part of every block learns
    assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(g[part]))

  # lambda and the simulator switch act
  t2 = small_task("--config.loss.raw_weight=3.0", "--config.loss.simulator=none")
  l2, a2 = jax.jit(t2.loss)(p, b, jax.random.PRNGKey(2))
  raw_nosim = float(jnp.mean(jnp.abs(inv(p, rgb) - b["raw"])))
  np.testing.assert_allclose(float(a2["raw_l1"]), raw_nosim, rtol=1e-4)
  assert abs(raw_nosim - want_raw) > 1e-5
  np.testing.assert_allclose(float(l2), want_rgb + 3.0 * raw_nosim, rtol=1e-4)

  # eval: 8-bit file -> real-codec (hard-rounded) JPEG -> 8 bits -> inverse -> clip
  m = jax.jit(task.eval_metrics)(p, b, jax.random.PRNGKey(0))
  assert {"loss", "rgb_psnr", "raw_psnr", "raw_psnr_8bit"} <= set(m)
  q8 = lambda x: jnp.round(jnp.clip(x, 0, 1) * 255) / 255
  rec = jnp.clip(inv(p, q8(task.jpeg_eval(q8(y)))), 0, 1)
  want = np.mean([10 * np.log10(1 / np.mean((np.asarray(r) - np.asarray(t)) ** 2))
                  for r, t in zip(rec, b["raw"])])
  np.testing.assert_allclose(float(m["raw_psnr"]), want, rtol=1e-4)


@pytest.mark.parametrize("override, key", [
    ("--config.loss.simulator=zip", "loss.simulator"),
    ("--config.jpeg.rounding=floor", "jpeg.rounding"),
    ("--config.jpeg.quality=0", "jpeg.quality"),
    ("--config.jpeg.subsampling=4:1:1", "jpeg.subsampling"),
    ("--config.loss.simulator=codec", "loss.simulator"),     # codec needs a video window
    ("--config.model.num_blocks=2", "model.num_blocks"),
])
def test_bad_config_names_the_key(override, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    small_task(override)
  with pytest.raises(ConfigError, match="video.window"):
    FlowISPTask(load(REPO / "configs" / "invisp_video_tiny.py", ["--config.video.window=2"]))


def test_every_invisp_config_builds_its_task():
  specs = [p.name for p in sorted((REPO / "jisp" / "configs").glob("invisp_*.py"))]
  specs += [f"invisp_fivek.py:blocks={n}" for n in (3, 5, 7, 9, 11)]
  for spec in specs:
    cfg = load(spec)
    task = FlowISPTask(cfg)
    assert task.flow.num_blocks == cfg.model.num_blocks
  assert load("invisp_fivek.py:blocks=5").model.num_blocks == 5
  assert load(REPO / "configs" / "invisp_fivek.py").optim.milestones == (20700, 33120)
  canon = load("invisp_fivek.py:camera=canon")
  assert canon.num_steps == 195_000 and canon.optim.milestones == (32_500, 52_000)
  # the old one-field ablation files still load, as arguments of their base
  assert load(REPO / "configs" / "invisp_fivek_q30.py").jpeg.quality == 30
  assert load(REPO / "configs" / "invisp_fivek_nosim.py").loss.simulator == "none"


def test_trains_through_the_loop_and_loss_falls(trained):
  ls = losses(trained)
  steps = sorted(ls)
  assert steps[-1] == 60
  assert ls[steps[-1]] < 0.8 * ls[steps[0]], ls
  ev = [r for r in raw_lines(trained) if "eval/raw_psnr" in r]
  assert ev and np.isfinite(ev[-1]["eval/raw_psnr"])
  assert ev[-1]["eval/raw_psnr"] > 18.0   # random init: ~10 dB


def _trained_task_params(wd):
  from jisp.train.checkpoint import restore_params
  task = FlowISPTask(load(TINY, TRAIN))
  step, params = restore_params(str(wd), task)
  assert int(step) == 60
  return task, params


@pytest.fixture(scope="module")
def trained_flow(trained):
  """(task, params, jitted forward, jitted inverse) of the trained run; one input shape."""
  task, p = _trained_task_params(trained)
  return task, p, jax.jit(task.flow.forward), jax.jit(task.flow.inverse)


def test_trained_params_stay_exactly_invertible(trained_flow):
  task, p, fwd, inv = trained_flow
  x = jax.random.uniform(jax.random.PRNGKey(3), (3, 32, 32, 3))
  assert float(jnp.max(jnp.abs(inv(p, fwd(p, x)) - x))) < 1e-4


def test_trained_params_invertible_on_real_patches(trained_flow, raw_dir):
  from test_flow import real_patches
  task, p, fwd, inv = trained_flow
  raw, rgb = real_patches(raw_dir, size=32)
  for arr in (raw, rgb):
    x = jnp.asarray(arr[: len(arr) // 3 * 3]).reshape(-1, 3, 32, 32, 3)
    err = max(float(jnp.max(jnp.abs(inv(p, fwd(p, xi)) - xi))) for xi in x)
    print(f"trained tiny flow, {len(arr)} real 32x32 patches: max |f^-1(f(x)) - x| = {err:.2e}")
    assert err < 1e-4
