"""jisp's GroupNorm against flax's: same parameters, same values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.models import color_net, norm, unet

SHAPES = [((2, 8, 8, 64), 32), ((3, 5, 7, 12), 4), ((2, 16, 96), 8), ((2, 4, 4, 6), 6),
          ((1, 6, 6, 16), 1)]


def _pair(shape, groups, dtype=None, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  # a mean far from zero and unequal group scales: the cases a wrong statistic shows
  x = 3.0 + jax.random.normal(k1, shape) * jnp.linspace(0.2, 4.0, shape[-1])
  params = {"params": {"scale": 1 + 0.3 * jax.random.normal(k2, (shape[-1],)),
                       "bias": 0.5 * jax.random.normal(k3, (shape[-1],))}}
  return (x, params, nn.GroupNorm(groups, dtype=dtype), norm.GroupNorm(groups, dtype=dtype))


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_values_and_gradients_equal_flax(shape, groups):
  x, params, ref, ours = _pair(shape, groups)
  # Both take var = E[x^2] - E[x]^2 (flax's default), whose rounding grows with mean^2 / var
  # (up to 225 in these channels) and depends on the summation order: compare with the
  # float64 truth, and with flax within that rounding.
  n, c = shape[0], shape[-1]
  xg = np.asarray(x, np.float64).reshape(n, -1, groups, c // groups)
  exact = ((xg - xg.mean((1, 3), keepdims=True)) / np.sqrt(xg.var((1, 3), keepdims=True) + 1e-6))
  exact = (exact.reshape(shape) * np.asarray(params["params"]["scale"])
           + np.asarray(params["params"]["bias"]))
  y = ours.apply(params, x)
  np.testing.assert_allclose(y, exact, atol=3e-5)
  np.testing.assert_allclose(y, ref.apply(params, x), atol=6e-5)
  g = jax.random.normal(jax.random.PRNGKey(9), shape)

  def grads(m):
    return jax.grad(lambda x, p: jnp.sum(nn.swish(m.apply(p, x)) * g), (0, 1))(x, params)

  (dx_r, dp_r), (dx, dp) = grads(ref), grads(ours)
  np.testing.assert_allclose(dx, dx_r, atol=1e-4, rtol=1e-4)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(dp["params"][name], dp_r["params"][name], atol=1e-4, rtol=1e-4)


def test_output_is_normalised_per_group():
  x, _, _, ours = _pair((2, 6, 6, 8), 2)
  y = ours.apply({"params": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}}, x)
  yg = np.asarray(y).reshape(2, 36, 2, 4)
  np.testing.assert_allclose(yg.mean((1, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(yg.var((1, 3)), 1.0, atol=1e-4)


def test_same_parameter_tree_as_flax():
  x = jnp.ones((1, 4, 4, 16))
  ref = jax.eval_shape(nn.GroupNorm(4).init, jax.random.PRNGKey(0), x)
  ours = jax.eval_shape(norm.GroupNorm(4).init, jax.random.PRNGKey(0), x)
  assert jax.tree.structure(ref) == jax.tree.structure(ours)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ref) == jax.tree.map(
      lambda a: (a.shape, a.dtype), ours)


def test_models_keep_their_parameter_names():
  """Checkpoints written with flax's GroupNorm restore into the models that now use ours."""
  net = color_net.ColorNet(base_channels=8, channel_mults=(1, 2), num_groups=4)
  tree = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  assert {"scale", "bias"} == set(tree["down0"]["GroupNorm_0"])
  assert "GroupNorm_1" in tree["down0"] and "norm_out" in tree
  u = unet.UNet(base_channels=8, channel_mults=(1, 2), attention_stages=(False, True),
                num_groups=4)
  tree = jax.eval_shape(u.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 6)),
                        jnp.zeros((1,)))["params"]
  for name in ("norm1", "norm2"):
    assert set(tree["down0_res0"][name]) == {"scale", "bias"}
  assert set(tree["down1_attn0"]["norm"]) == {"scale", "bias"}


def test_bfloat16_compute_keeps_float32_statistics():
  x, params, ref, ours = _pair((2, 8, 8, 32), 8, dtype=jnp.bfloat16)
  xb = x.astype(jnp.bfloat16)
  y = ours.apply(params, xb)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(ref.apply(params, xb), np.float32), atol=0.05)


def test_groups_must_divide_channels():
  with pytest.raises(ValueError, match="does not divide"):
    norm.GroupNorm(5).init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 12)))


@pytest.mark.parametrize("shape,groups", SHAPES[:2])
def test_swish_activation_equals_flax_norm_then_swish(shape, groups):
  x, params, ref, _ = _pair(shape, groups)
  ours = norm.GroupNorm(groups, activation="swish")
  np.testing.assert_allclose(ours.apply(params, x), nn.swish(ref.apply(params, x)), atol=6e-5)
  g = jax.random.normal(jax.random.PRNGKey(9), shape)
  d_ours = jax.grad(lambda x, p: jnp.sum(ours.apply(p, x) * g), (0, 1))(x, params)
  d_ref = jax.grad(lambda x, p: jnp.sum(nn.swish(ref.apply(p, x)) * g), (0, 1))(x, params)
  for a, b in zip(jax.tree.leaves(d_ours), jax.tree.leaves(d_ref)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", [None, "swish"])
def test_backward_keeps_only_the_input(activation):
  """Norm and activation are recomputed in the backward pass: of the full-size arrays,
  only x itself is saved from the forward one (autodiff alone would also keep x^2, the
  normalised values and the activation's intermediates)."""
  x, params, _, _ = _pair((2, 8, 8, 64), 32)
  ours = norm.GroupNorm(32, activation=activation)

  def full_size_residuals(fn):
    _, vjp = jax.vjp(fn, x, params)
    return [a for a in jax.tree.leaves(vjp) if getattr(a, "size", 0) == x.size]

  assert len(full_size_residuals(lambda x, p: ours.apply(p, x))) == 1
  plain = lambda x, p: nn.swish(norm.group_norm(x, p["params"]["scale"], p["params"]["bias"],
                                                32))
  assert len(full_size_residuals(plain)) > 1  # what the recomputation saves


def test_unknown_activation_is_refused():
  with pytest.raises(ValueError, match="activation 'relu'"):
    norm.GroupNorm(4, activation="relu").init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 8)))
