"""Network micro-batching inside the compiled sampler (core.microbatch, predictor option)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.core import microbatch
from jisp.core.errors import ConfigError, OptionError
from jisp.core.microbatch import microbatched


def _centre(x, t):
  # depends on which rows share a call: reveals how the batch was split
  return x - x.mean(axis=0, keepdims=True) + t[:, None]


def test_microbatches_are_strided_rows_and_order_is_kept():
  x = jnp.arange(12.0).reshape(6, 2) ** 2
  t = jnp.arange(6.0)
  y = jax.jit(microbatched(_centre, 2))(x, t)
  xn = np.asarray(x)
  want = np.empty_like(xn)
  for i in range(3):  # micro-batch i holds rows i and i+3
    rows = [i, i + 3]
    want[rows] = xn[rows] - xn[rows].mean(axis=0) + np.arange(6.0)[rows, None]
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6)
  # whole-batch call differs (so the test sees the split at all)
  assert not np.allclose(np.asarray(_centre(x, t)), want)


def test_no_split_when_off_or_batch_small_and_error_when_size_does_not_divide():
  x, t = jnp.ones((6, 2)), jnp.zeros((6,))
  assert microbatched(_centre, None) is _centre
  np.testing.assert_allclose(microbatched(_centre, 8)(x, t), _centre(x, t))
  with pytest.raises(ValueError, match="micro-batch size 4 does not divide the batch of 6"):
    microbatched(_centre, 4)(x, t)


def test_resolve_net_chunk():
  assert microbatch.resolve_chunk("auto", 2, backend="cpu") == 4
  assert microbatch.resolve_chunk("auto", 2, backend="gpu") is None
  assert microbatch.resolve_chunk("none", 2) is None
  assert microbatch.resolve_chunk("24", 8) == 24
  with pytest.raises(OptionError, match="multiple of the 8 devices"):
    microbatch.resolve_chunk(12, 8)
  with pytest.raises(OptionError, match="'auto', 'none' or a positive integer"):
    microbatch.resolve_chunk("big", 8)
  # the micro-batch of a call: largest multiple of the devices that divides it, <= chunk
  assert microbatch.chunk_for(32, 16, 8) == 16 and microbatch.chunk_for(16, 16, 8) is None
  assert microbatch.chunk_for(24, 16, 8) == 8 and microbatch.chunk_for(24, None, 8) is None


class _Quadratic:
  """A task whose loss ignores the key, so whole-batch and micro-batched steps must agree."""

  def loss(self, params, batch, rng):
    del rng
    r = params["w"] * batch["x"] + params["b"] - batch["y"]
    return jnp.mean(r ** 2), {"abs": jnp.mean(jnp.abs(r))}


def test_train_step_micro_batches_accumulate_to_the_batch_mean():
  from jisp.train.loop import loss_and_grads
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(12, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)}
  params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.3)}
  key = jax.random.PRNGKey(0)
  whole = jax.jit(lambda p, b: loss_and_grads(_Quadratic(), p, b, key))(params, batch)
  for m in (3, 4, 6):
    part = jax.jit(lambda p, b: loss_and_grads(_Quadratic(), p, b, key, m))(params, batch)
    for a, b in zip(jax.tree.leaves(part), jax.tree.leaves(whole)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  # a wrong mean (e.g. summing micro-batches) would be caught: the values are not trivial
  assert float(whole[0]) > 0.1 and float(jnp.abs(whole[2]["w"]).sum()) > 0.1


def test_micro_batch_config_check():
  import ml_collections
  from jisp.train.micro_batch import check as check_micro_batch
  cfg = ml_collections.ConfigDict({"batch_size": 16, "micro_batch": 0})
  check_micro_batch(cfg, 8)
  for ok in (8, 16, 32):
    cfg.micro_batch = ok
    check_micro_batch(cfg, 8)
  for bad in (4, 6, -8):
    cfg.micro_batch = bad
    with pytest.raises(ConfigError, match="'micro_batch'"):
      check_micro_batch(cfg, 8)


# ------------------------------------------------------------ micro_batch = "auto" (training)

def test_auto_choice_fits_the_budget_divides_the_batch_and_caps_the_parts():
  from jisp.train.micro_batch import CPU_WORKING_SET, choose
  mib = 2 ** 20
  small = 640 * mib
  # 4 of a device's 8 examples fit 640 MiB at 150 MiB each: 4 per device, 8 in all
  assert choose(16, 2, 150 * mib, small) == 8
  assert choose(32, 2, 275 * mib, small) == 4     # 2 per device, 8 parts
  assert choose(32, 1, 275 * mib, small) == 4     # 2 fit, but 16 parts > 8: 4
  assert choose(32, 8, 2 * mib, small) == 0       # everything fits: the whole batch
  assert choose(12, 2, 250 * mib, small) == 4     # 2 fit, and 2 divides a device's 6
  assert choose(20, 2, 150 * mib, small) == 4     # 4 fit, but 4 does not divide 10: 2
  assert choose(8, 2, 10 ** 12, small) == 2       # nothing fits: one per device
  # the paper U-Net (about 240 MiB a patch) at batch 32: 8 per device with XLA's own
  # convolutions, on 1 and 2 devices; 2 per device with YNNPACK's, capped at 8 parts
  assert choose(32, 1, 240 * mib, CPU_WORKING_SET["xla"]) == 8
  assert choose(32, 2, 240 * mib, CPU_WORKING_SET["xla"]) == 16
  assert choose(32, 2, 240 * mib, CPU_WORKING_SET["ynnpack"]) == 4
  assert choose(32, 1, 240 * mib, CPU_WORKING_SET["ynnpack"]) == 4


def _task(cfg_file, *overrides):
  from jisp.core.config import load
  from jisp.train import runs
  return runs.build_task(load(cfg_file, overrides))


# Two levels, one block each, attention at the lower one: every part, the least compile.
SMALL_UNET = ("--config.model.base_channels=8", "--config.model.num_groups=4",
              "--config.model.channel_mults=(1,2)", "--config.model.attention_stages=(False,True)",
              "--config.model.num_res_blocks=1", "--config.data.patch_size=16",
              "--config.batch_size=8")
MICRO_DDPM = ("jisp/configs/ddpm_fivek.py", *SMALL_UNET)


def test_auto_splits_only_on_cpu_only_tasks_that_name_their_draws_and_obeys_the_config():
  from jisp.train.micro_batch import forward_bytes_per_example, resolve
  task = _task(*MICRO_DDPM)
  cfg = task.config
  per_example = forward_bytes_per_example(task)
  assert 2 ** 20 < per_example < 2 ** 23  # a 16x16 micro U-Net: a few MiB per patch
  budget = 2 * per_example + 1            # 2 per device fit of the 4 each device holds
  assert resolve(task, cfg, 2, backend="cpu", budget=budget) == 4
  assert resolve(task, cfg, 2, backend="cpu") == 0              # the real budget: whole
  assert resolve(task, cfg, 2, backend="gpu", budget=budget) == 0
  with cfg.ignore_type():
    cfg.micro_batch = 4
  assert resolve(task, cfg, 2, backend="gpu") == 4              # an explicit count is kept
  # the budget is the one of the train step's convolution library (config cpu_conv)
  from jisp.train import micro_batch
  real = dict(micro_batch.CPU_WORKING_SET)
  try:
    micro_batch.CPU_WORKING_SET.update(xla=2 * per_example + 1, ynnpack=per_example + 1)
    with cfg.ignore_type():
      cfg.micro_batch = "auto"
    assert resolve(task, cfg, 2, backend="cpu") == 4
    ynn = _task(*MICRO_DDPM, "--config.cpu_conv=ynnpack")
    assert resolve(ynn, ynn.config, 2, backend="cpu") == 2
  finally:
    micro_batch.CPU_WORKING_SET.update(real)
  # a task that cannot say what its loss draws is never split by "auto"
  flow = _task("jisp/configs/invisp_tiny.py")
  assert flow.draws(jax.random.PRNGKey(0), {}) is None
  assert resolve(flow, flow.config, 1, backend="cpu", budget=1) == 0


@pytest.mark.parametrize("cfg", [MICRO_DDPM, ("jisp/configs/dtdm_rgb2raw_tiny.py", *SMALL_UNET)],
                         ids=["ddpm", "dtdm"])
def test_auto_micro_batches_give_the_whole_batch_losses_and_gradients(cfg):
  """The choice "auto" makes (forced here by a small budget) changes nothing but the
  summation order: the same draws reach every example."""
  from jisp.train.loop import loss_and_grads
  from jisp.train.micro_batch import forward_bytes_per_example, resolve
  task = _task(*cfg)
  m = resolve(task, task.config, 2, backend="cpu",
              budget=2 * forward_bytes_per_example(task) + 1)
  assert m == 4
  rng = np.random.default_rng(0)
  # Any weights do (host-drawn: no init program to compile); none zero, so every
  # gradient is live.
  params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype),
                        jax.eval_shape(task.init_params, jax.random.PRNGKey(1)))
  batch = {k: jnp.asarray(rng.random(s.shape), s.dtype)
           for k, s in task.batch_spec(8).items()}
  key = jax.random.PRNGKey(2)
  # Both in one program: one compile. Micro-batches drawing with keys of their own would
  # see other noise and timesteps, and a loss off by far more than the tolerance.
  whole, split = jax.jit(lambda p, b: (loss_and_grads(task, p, b, key),
                                       loss_and_grads(task, p, b, key, m)))(params, batch)
  np.testing.assert_allclose(split[0], whole[0], rtol=2e-5)
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])  # noqa: E731
  gs, gw = flat(split[2]), flat(whole[2])
  np.testing.assert_allclose(gs, gw, rtol=1e-3, atol=1e-5 * np.abs(gw).max())
  assert np.abs(gw).max() > 1e-3


def test_config_micro_batch_takes_auto_or_a_count_over_either_type():
  from jisp.core.config import load
  cfg = load("jisp/configs/ddpm_tiny.py")
  assert cfg.micro_batch == "auto"  # the default
  assert load("jisp/configs/ddpm_tiny.py", ["--config.micro_batch=4"]).micro_batch == 4
  c = load("jisp/configs/ddpm_tiny.py", ["--config.micro_batch=4", "--config.micro_batch=auto"])
  assert c.micro_batch == "auto"
  with pytest.raises(ConfigError, match="'micro_batch'.*'auto' or an integer"):
    load("jisp/configs/ddpm_tiny.py", ["--config.micro_batch=big"])
