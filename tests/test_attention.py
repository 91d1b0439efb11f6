"""The recomputing attention against the plain softmax expression: values and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.core.errors import ConfigError
from jisp.models import attention, unet


def _qkvg(b, t, c, seed=0, scale=1.0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return [scale * jax.random.normal(k, (b, t, c)) for k in ks]


def _grads(fn, q, k, v, g):
  return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * g), (0, 1, 2))(q, k, v)


# blocks that divide T, that leave a ragged last block, and one bigger than T; logits large
# enough (scale 3 -> |s| up to ~100) that an unshifted exp would overflow
@pytest.mark.parametrize("t,block,scale", [(64, 16, 1.0), (50, 16, 1.0), (40, 64, 1.0),
                                           (64, 32, 3.0)])
def test_values_and_gradients_equal_the_plain_expression(t, block, scale):
  q, k, v, g = _qkvg(2, t, 8, scale=scale)
  fn = functools.partial(attention.attention, block=block)
  np.testing.assert_allclose(fn(q, k, v), attention.softmax_attention(q, k, v),
                             atol=2e-5, rtol=1e-5)
  ours, ref = _grads(fn, q, k, v, g), _grads(attention.softmax_attention, q, k, v, g)
  for name, a, b in zip("qkv", ours, ref):
    assert np.all(np.isfinite(a)), name
    np.testing.assert_allclose(a, b, atol=1e-4 * max(float(jnp.abs(b).max()), 1.0),
                               err_msg=name)


def test_gradient_matches_finite_differences():
  """The plain expression could share a mistake with ours; a finite difference cannot."""
  q, k, v, g = _qkvg(1, 12, 4, seed=3)
  with jax.enable_x64(True):
    q, k, v, g = [jnp.asarray(np.asarray(x), jnp.float64) for x in (q, k, v, g)]
    loss = lambda q, k, v: jnp.sum(attention.attention(q, k, v, 5) * g)
    dq, dk, dv = jax.grad(loss, (0, 1, 2))(q, k, v)
    eps = 1e-6
    for arr, grad, which in ((q, dq, 0), (k, dk, 1), (v, dv, 2)):
      d = jax.random.normal(jax.random.PRNGKey(which), arr.shape, jnp.float64)
      args = [q, k, v]
      plus = list(args); plus[which] = arr + eps * d
      minus = list(args); minus[which] = arr - eps * d
      fd = (loss(*plus) - loss(*minus)) / (2 * eps)
      np.testing.assert_allclose(float(jnp.sum(grad * d)), float(fd), rtol=1e-6)


def test_backward_keeps_no_probability_matrix_from_the_forward():
  """Only (T, C) outputs and per-query log-sum-exps cross from forward to backward."""
  q, k, v, _ = _qkvg(2, 64, 8)
  for fn, most in ((functools.partial(attention.attention, block=16), 64 * 8),
                   (attention.softmax_attention, 64 * 64)):
    _, res = jax.vjp(fn, q, k, v)
    sizes = [x.size // 2 for x in jax.tree.leaves(res) if hasattr(x, "size")]
    assert max(sizes) == most, (fn, sizes)


def test_every_backward_product_reads_its_left_operand_by_rows():
  """The backward's products all contract the last axis of their left operand (the
  layout XLA:CPU multiplies at full rate), and each product is one of the five per block."""
  q, k, v, g = _qkvg(2, 64, 8)
  fn = functools.partial(attention.attention, block=16)
  jaxpr = jax.make_jaxpr(lambda q, k, v: jax.vjp(fn, q, k, v)[1](g))(q, k, v)

  def dots(jx):
    for eqn in jx.eqns:
      for sub in eqn.params.values():
        for j in (sub if isinstance(sub, (list, tuple)) else [sub]):
          if hasattr(j, "eqns") or hasattr(getattr(j, "jaxpr", None), "eqns"):
            yield from dots(getattr(j, "jaxpr", j))
      if eqn.primitive.name == "dot_general":
        yield eqn

  found = list(dots(jaxpr.jaxpr))
  # forward: scores and the product with v; backward: 5 per block of 16 queries
  assert len(found) == 2 + 5 * (64 // 16)
  for eqn in found:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    assert tuple(lhs_contract) == (eqn.invars[0].aval.ndim - 1,), eqn


def test_bfloat16_inputs_keep_a_float32_softmax():
  q, k, v, g = _qkvg(2, 32, 8, scale=2.0)
  qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out = attention.attention(qb, kb, vb, 8)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             attention.softmax_attention(q, k, v), atol=0.06)
  grads = _grads(functools.partial(attention.attention, block=8), qb, kb, vb,
                 g.astype(jnp.bfloat16))
  assert all(x.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(x, np.float32)))
             for x in grads)


def test_unet_gradients_equal_with_either_backward():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 6))
  t = jnp.asarray([3, 700])
  nets = {m: unet.UNet(base_channels=16, channel_mults=(1, 2), attention_stages=(False, True),
                       num_groups=8, attention_grad=m) for m in attention.GRADS}
  params = nets["xla"].init(jax.random.PRNGKey(0), x, t)
  grads = {m: jax.grad(lambda p, net=net: jnp.mean(jnp.square(net.apply(p, x, t) - 0.1)))(params)
           for m, net in nets.items()}
  flat = jax.tree_util.tree_leaves_with_path(grads["xla"])
  for (path, a), b in zip(flat, jax.tree_util.tree_leaves(grads["recompute"])):
    # the key bias's gradient is zero in exact arithmetic (a constant added to a query's
    # logits leaves its softmax alone), so both hold only rounding there: hence the floor
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * max(float(np.abs(a).max()), 1e-4),
                               err_msg=jax.tree_util.keystr(path))


def test_config_key_and_bad_value():
  from jisp.core import config as config_lib
  base = config_lib.load("jisp/configs/ddpm_fivek.py")
  assert unet.from_config(base.model).attention_grad == "recompute"
  cfg = config_lib.load("jisp/configs/ddpm_fivek.py", ["--config.model.attention_grad=xla"])
  assert unet.from_config(cfg.model).attention_grad == "xla"
  cfg.model.attention_grad = "flash"
  with pytest.raises(ConfigError, match="config key 'model.attention_grad': 'flash'"):
    unet.from_config(cfg.model)


def test_forward_mode_needs_xla():
  q, k, v, _ = _qkvg(1, 16, 4)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(lambda q: attention.attention(q, k, v, 8), (q,), (q,))
  jax.jvp(lambda q: attention.attention_fn("xla")(q, k, v), (q,), (q,))
