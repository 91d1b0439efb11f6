"""jisp.models.conv: the kernel gradient as matmuls equals XLA's convolution gradient,
and the U-Net trained through it gets the same gradients as through XLA's own."""
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jisp.core.errors import ConfigError
from jisp.models import conv, unet

DN = ("NHWC", "HWIO", "NHWC")


def _grads(fn, x, w, strides, padding, **kw):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  # a non-linear read-out, so dy differs at every output position
  loss = lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, dimension_numbers=dn, **kw)))
  return fn(x, w, strides, padding, dimension_numbers=dn, **kw), jax.grad(loss, (0, 1))(x, w)


# Kernels 1x1 to 5x5 and non-square, strides 1 and 2 and mixed, every padding kind the
# models use and lopsided ones; odd and even sizes (a stride-2 output row may miss the
# last input row).
CASES = list(itertools.product(
    [(1, 1), (3, 3), (2, 3), (5, 5)], [(1, 1), (2, 2), (1, 2)],
    ["SAME", "VALID", ((1, 2), (0, 1)), ((2, 0), (1, 1))], [(7, 9), (8, 6)]))


@pytest.mark.parametrize("kernel,strides,padding,hw", CASES)
def test_kernel_gradient_as_matmul_equals_xlas(kernel, strides, padding, hw):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, *hw, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel, 3, 4)), jnp.float32)
  y0, (dx0, dw0) = _grads(lax.conv_general_dilated, x, w, strides, padding)
  y1, (dx1, dw1) = _grads(conv.conv_general_dilated, x, w, strides, padding)
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))  # XLA's own forward
  np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx0), rtol=0, atol=1e-6)
  scale = float(jnp.abs(dw0).max())
  np.testing.assert_allclose(np.asarray(dw1), np.asarray(dw0), rtol=0, atol=2e-6 * scale)


def test_kernel_gradient_is_matmuls_not_a_convolution():
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  text = str(jax.make_jaxpr(jax.grad(lambda w: conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=dn).sum()))(w))
  # one product per kernel column: 3 channels x (3 kernel rows x 4 features)
  assert len(re.findall(r"f32\[3,12\] = dot_general", text)) == 3, text
  # the only convolutions are the forward, once, and the input gradient (x's shape);
  # none produces the kernel's shape
  convs = re.findall(r"(f32\[[0-9,]+\]) = conv_general_dilated", text)
  assert sorted(convs) == ["f32[2,8,8,3]", "f32[2,8,8,4]"], convs


def test_grouped_and_dilated_convolutions_go_to_lax_unchanged():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
  for kw in ({"feature_group_count": 2}, {"rhs_dilation": (2, 2)}):
    ww = w if "feature_group_count" in kw else jnp.concatenate([w, w], 2)
    _, g0 = _grads(lax.conv_general_dilated, x, ww, (1, 1), "SAME", **kw)
    _, g1 = _grads(conv.conv_general_dilated, x, ww, (1, 1), "SAME", **kw)
    for a, b in zip(g0, g1):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_choice_and_bad_value():
  assert conv.uses_matmul("matmul") and not conv.uses_matmul("xla")
  # "auto": matmuls where the train step's convolutions are YNNPACK's on the CPU
  cpu = jax.default_backend() == "cpu"
  assert conv.uses_matmul("auto", "ynnpack") == cpu and not conv.uses_matmul("auto", "xla")
  assert conv.resolve_kernel_grad("auto", "ynnpack", backend="gpu") == "xla"
  assert conv.resolve_kernel_grad("matmul", "xla") == "matmul"
  assert conv.conv_fn("xla") is lax.conv_general_dilated
  with pytest.raises(ConfigError, match="config key 'model.conv_kernel_grad': 'fast'"):
    conv.check_kernel_grad("fast")


def test_unet_gradients_match_xlas_through_every_layer():
  """Strided downsampling, 1x1 skips, attention stages: one loss, two kernel gradients."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 6)), jnp.float32)
  t = jnp.asarray([3, 700])
  nets = {m: unet.UNet(base_channels=16, channel_mults=(1, 2), attention_stages=(False, True),
                       num_groups=8, conv_kernel_grad=m) for m in ("xla", "matmul")}
  params = nets["xla"].init(jax.random.PRNGKey(0), x, t)
  losses = {m: (lambda p, net=net: jnp.mean(jnp.square(net.apply(p, x, t) - 0.1)))
            for m, net in nets.items()}
  grads = {m: jax.grad(f)(params) for m, f in losses.items()}
  # the two really differ in how: only the matmul one builds the shifted operands
  barriers = {m: str(jax.make_jaxpr(jax.grad(f))(params)).count("optimization_barrier")
              for m, f in losses.items()}
  assert barriers["xla"] == 0 and barriers["matmul"] >= 10, barriers
  flat0 = jax.tree_util.tree_leaves_with_path(grads["xla"])
  flat1 = jax.tree_util.tree_leaves(grads["matmul"])
  kernels = 0
  for (path, a), b in zip(flat0, flat1):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * max(np.abs(a).max(), 1e-12),
                               err_msg=jax.tree_util.keystr(path))
    kernels += a.ndim == 4
  assert kernels >= 10


def test_config_key_reaches_the_unet_and_a_bad_value_names_it():
  from jisp.core import config as config_lib
  cfg = config_lib.load("jisp/configs/ddpm_fivek.py", ["--config.model.conv_kernel_grad=xla"])
  assert unet.from_config(cfg.model).conv_kernel_grad == "xla"
  # the default follows the train step's convolution library (config cpu_conv)
  auto = config_lib.load("jisp/configs/ddpm_fivek.py")
  assert unet.from_config(auto.model).conv_kernel_grad == "xla"
  assert unet.from_config(auto.model, "ynnpack").conv_kernel_grad == (
      "matmul" if jax.default_backend() == "cpu" else "xla")
  from jisp.tasks import ddpm
  ynn = config_lib.load("jisp/configs/ddpm_tiny.py", ["--config.cpu_conv=ynnpack"])
  assert ddpm.DDPMTask(ynn).model.conv_kernel_grad == (
      "matmul" if jax.default_backend() == "cpu" else "xla")
  cfg.model.conv_kernel_grad = "fast"
  with pytest.raises(ConfigError, match="model.conv_kernel_grad"):
    unet.from_config(cfg.model)


def test_forward_mode_needs_xla_and_says_so():
  """custom_vjp has no forward mode: jax.jvp through the matmul path raises JAX's own
  error, and "xla" (the documented way out) differentiates forward."""
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(lambda w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn),
            (w,), (w,))
  fn = conv.conv_fn("xla")
  jax.jvp(lambda w: fn(x, w, (1, 1), "SAME", dimension_numbers=dn), (w,), (w,))
