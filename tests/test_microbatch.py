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
  from jisp.train.loop import check_micro_batch
  cfg = ml_collections.ConfigDict({"batch_size": 16, "micro_batch": 0})
  check_micro_batch(cfg, 8)
  for ok in (8, 16, 32):
    cfg.micro_batch = ok
    check_micro_batch(cfg, 8)
  for bad in (4, 6, -8):
    cfg.micro_batch = bad
    with pytest.raises(ConfigError, match="'micro_batch'"):
      check_micro_batch(cfg, 8)
