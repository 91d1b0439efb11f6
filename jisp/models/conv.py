"""A drop-in `conv_general_dilated` for flax's nn.Conv whose kernel gradient is matmuls.

YNNPACK (XLA:CPU's default convolution library) computes the kernel gradient of a
convolution as another convolution whose window is the whole feature map, at a fraction of
the rate of the forward pass: it was the single heaviest item of the U-Net's train step
when the step ran on YNNPACK (README, "Speed"). Here the kernel gradient of a 2-D
NHWC/HWIO convolution is rewritten as matrix products:

  dW[a, b, c, d] = sum_{n,r,j} X_b[n, r, j, c] * G[n, r, j, (a, d)]

with X_b the input shifted along its width for kernel column b (a strided slice of the
width-padded input) and G the output gradient shifted along its height once per kernel row
(a pad, dilated by the stride), the `kh` shifts side by side. The sum runs over the input's
own rows (the height padding holds zeros and drops out), so the `kw` products (one per
kernel column, each against all kernel rows) cost the convolution's own FLOPs; x is shifted
but never concatenated. The forward pass and the input gradient stay XLA's own
convolutions. Values equal XLA's kernel gradient up to summation order (tests/test_conv.py).

`kernel_grad`: "matmul" always, "xla" never, "auto" where it pays: on the CPU backend when
the train step's convolutions run on YNNPACK (config `cpu_conv`, jisp.core.cpu_conv), whose
kernel gradients are the slow ones. XLA's own CPU convolutions and accelerators' libraries
compute kernel gradients well. The matmul gradient is a custom_vjp, so it serves
reverse-mode differentiation (training) only: forward mode through the network (jax.jvp,
jax.jacfwd) needs "xla".
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

KERNEL_GRADS = ("auto", "matmul", "xla")
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def check_kernel_grad(value: str, key: str = "model.conv_kernel_grad") -> str:
  if value not in KERNEL_GRADS:
    from jisp.core.errors import ConfigError
    raise ConfigError(f"bad value for config key '{key}': {value!r} (expected one of "
                      f"{', '.join(KERNEL_GRADS)})")
  return value


def resolve_kernel_grad(kernel_grad: str, conv_library: str = "xla",
                        backend: str | None = None) -> str:
  """"matmul" or "xla": what `kernel_grad` means when the train step's convolutions run on
  `conv_library` ("xla" or "ynnpack", jisp.core.cpu_conv.library) on `backend`."""
  check_kernel_grad(kernel_grad)
  if kernel_grad != "auto":
    return kernel_grad
  backend = backend or jax.default_backend()
  return "matmul" if backend == "cpu" and conv_library == "ynnpack" else "xla"


def uses_matmul(kernel_grad: str, conv_library: str = "xla") -> bool:
  return resolve_kernel_grad(kernel_grad, conv_library) == "matmul"


def conv_kernel_grad(x, dy, kernel_hw: Sequence[int], strides: Sequence[int], pads):
  """dL/dW of `lax.conv_general_dilated(x, W, strides, pads, NHWC/HWIO)` given dL/dy."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  (ph0, _), (pw0, pw1) = pads
  h, c = x.shape[1], x.shape[3]
  ho, wo, d = dy.shape[1:]
  # Read x and dy as the buffers they are: otherwise XLA fuses their producers (a norm and
  # swish, the upstream gradient) into each shifted copy and computes them kw or kh times.
  x, dy = lax.optimization_barrier((x, dy))
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0), (pw0, pw1, 0), (0, 0, 0)))
  # column b of the kernel sees input columns sw*j + b of the width-padded input
  xs = [lax.slice_in_dim(xp, b, b + sw * (wo - 1) + 1, sw, axis=2) for b in range(kw)]
  # row a of the kernel pairs input row r with output row i where r + ph0 = sh*i + a:
  # the output gradient dilated by the stride and placed at offset a - ph0 (a negative
  # pad crops), h rows long
  gs = []
  for a in range(kh):
    lo = a - ph0
    hi = h - lo - (sh * (ho - 1) + 1)
    gs.append(lax.pad(dy, jnp.zeros((), dy.dtype),
                      ((0, 0, 0), (lo, hi, sh - 1), (0, 0, 0), (0, 0, 0))))
  g3 = gs[0] if kh == 1 else jnp.concatenate(gs, axis=-1)
  g3 = g3.reshape(-1, kh * d)
  # one product per kernel column against all kernel rows at once: the column shifts are
  # never concatenated (for a centred 3x3 the middle one is x itself, no copy)
  cols = [xb.reshape(-1, c).T @ g3 for xb in xs]  # each (c, (a, d))
  return jnp.stack(cols).reshape(kw, c, kh, d).transpose(2, 0, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, pads, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv_bwd(strides, pads, precision, res, dy):
  x, kernel = res
  # The input gradient is the convolution's transpose in x, traced without its forward.
  dx_of = jax.linear_transpose(lambda x_: lax.conv_general_dilated(
      x_, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision),
      jax.ShapeDtypeStruct(x.shape, x.dtype))
  dk = conv_kernel_grad(x, dy, kernel.shape[:2], strides, pads)
  return dx_of(dy)[0], dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the matmul kernel gradient where it applies (2-D,
  NHWC/HWIO, no dilation, no groups); anything else goes to lax unchanged."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None and lhs.dtype == rhs.dtype
           and all(v == 1 for v in (lhs_dilation or (1, 1)))
           and all(v == 1 for v in (rhs_dilation or (1, 1)))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  if plain:
    pads = padding
    if isinstance(pads, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, pads)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if all(p >= 0 for pair in pads for p in pair):  # a negative pad crops: lax's own case
      return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type)


def conv_fn(kernel_grad: str):
  """What nn.Conv's `conv_general_dilated` should be under `kernel_grad`."""
  return conv_general_dilated if uses_matmul(kernel_grad) else lax.conv_general_dilated
