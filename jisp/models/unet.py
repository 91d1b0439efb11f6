"""The epsilon U-Net of the DDPM-for-inverse-ISP paper, as a Flax linen module.

Shape (paper + the diffusers layout used by the PyTorch peer, so FLOPs compare 1:1):
  conv_in -> encoder stages (N_res residual blocks each, self-attention after every block
  in stages flagged in `attention_stages`, 2x strided-conv downsampling between stages)
  -> decoder stages mirrored with N_res+1 blocks, each consuming one skip connection,
  nearest-neighbour 2x upsampling + conv between stages -> GroupNorm/Swish/conv_out.
Residual blocks are ResNet BasicBlocks (two 3x3 convs) with GroupNorm, Swish and an
additive projection of the timestep embedding.  No middle block (the paper has none).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jisp.models import attention as attention_lib
from jisp.models import conv as conv_lib
from jisp.models import norm as norm_lib


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """Sinusoidal embedding of (possibly non-integer) timesteps, shape (B,) -> (B, dim).

  Floats are accepted so that continuous-time samplers (DPM-Solver) can query the
  network between the discrete training steps.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  # cos first, like diffusers' flip_sin_to_cos=True default in UNet2DModel
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _conv(kernel_grad: str):
  """nn.Conv computing its kernel gradient as `jisp.models.conv` says for `kernel_grad`."""
  return functools.partial(nn.Conv, conv_general_dilated=conv_lib.conv_fn(kernel_grad))


class ResBlock(nn.Module):
  out_ch: int
  num_groups: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  conv_kernel_grad: str = "auto"

  @nn.compact
  def __call__(self, x, temb, train: bool):
    conv = _conv(self.conv_kernel_grad)
    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish",
                           name="norm1")(x)
    h = conv(self.out_ch, (3, 3), dtype=self.dtype, name="conv1")(h)
    h = h + nn.Dense(self.out_ch, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None, :]
    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish",
                           name="norm2")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_ch, (3, 3), dtype=self.dtype, name="conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = conv(self.out_ch, (1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class SelfAttention(nn.Module):
  """Single-head scaled dot-product attention over all spatial positions."""
  num_groups: int
  dtype: jnp.dtype = jnp.float32
  # how the backward pass gets the probabilities (jisp.models.attention.GRADS)
  attention_grad: str = "recompute"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, name="norm")(x).reshape(b, h * w, c)
    q = nn.Dense(c, dtype=self.dtype, name="q")(y)
    k = nn.Dense(c, dtype=self.dtype, name="k")(y)
    v = nn.Dense(c, dtype=self.dtype, name="v")(y)
    # softmax in fp32 even under bf16 compute: 1024-4096 keys overflow bf16 sums
    out = attention_lib.attention_fn(self.attention_grad)(q, k, v)
    out = nn.Dense(c, dtype=self.dtype, name="proj")(out)
    return x + out.reshape(b, h, w, c)


class UNet(nn.Module):
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 3, 4)
  num_res_blocks: int = 1
  attention_stages: Sequence[bool] = (False, True, True, True)
  num_groups: int = 32
  dropout: float = 0.0
  out_channels: int = 3
  dtype: jnp.dtype = jnp.float32
  # the output conv starts at zero: a network read as a residual over an estimate then
  # begins as that estimate exactly, not as the estimate plus a random image
  zero_out: bool = False
  # how a convolution's kernel gradient is computed (jisp.models.conv.KERNEL_GRADS)
  conv_kernel_grad: str = "auto"
  # how attention's backward pass gets the probabilities (jisp.models.attention.GRADS)
  attention_grad: str = "recompute"

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    """x: (B, H, W, C_in) noisy RAW concatenated with the condition; t: (B,) timesteps."""
    assert len(self.attention_stages) == len(self.channel_mults)
    n_stages = len(self.channel_mults)
    ch0 = self.base_channels
    temb_dim = 4 * ch0
    temb = timestep_embedding(t, ch0)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name="temb_1")(temb)
    temb = nn.Dense(temb_dim, dtype=self.dtype, name="temb_2")(nn.swish(temb))

    conv = _conv(self.conv_kernel_grad)
    h = conv(ch0, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
    skips = [h]
    for i, mult in enumerate(self.channel_mults):
      ch = ch0 * mult
      for j in range(self.num_res_blocks):
        h = ResBlock(ch, self.num_groups, self.dropout, self.dtype, self.conv_kernel_grad,
                     name=f"down{i}_res{j}")(h, temb, train)
        if self.attention_stages[i]:
          h = SelfAttention(self.num_groups, self.dtype, self.attention_grad,
                            name=f"down{i}_attn{j}")(h)
        skips.append(h)
      if i < n_stages - 1:
        h = conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"down{i}_downsample")(h)
        skips.append(h)

    for i in reversed(range(n_stages)):
      ch = ch0 * self.channel_mults[i]
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(ch, self.num_groups, self.dropout, self.dtype, self.conv_kernel_grad,
                     name=f"up{i}_res{j}")(h, temb, train)
        if self.attention_stages[i]:
          h = SelfAttention(self.num_groups, self.dtype, self.attention_grad,
                            name=f"up{i}_attn{j}")(h)
      if i > 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
        h = conv(ch, (3, 3), dtype=self.dtype, name=f"up{i}_upsample")(h)
    assert not skips

    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish",
                           name="norm_out")(h)
    init = nn.initializers.zeros if self.zero_out else nn.linear.default_kernel_init
    h = conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=init,
             name="conv_out")(h)
    return h.astype(jnp.float32)


def from_config(mcfg, conv_library: str = "xla") -> UNet:
  """The U-Net of a config's `model` block; `conv_library`: the library the train step's
  convolutions run on (jisp.core.cpu_conv.library), which "auto" kernel gradients follow."""
  return UNet(
      base_channels=mcfg.base_channels,
      channel_mults=tuple(mcfg.channel_mults),
      num_res_blocks=mcfg.num_res_blocks,
      attention_stages=tuple(mcfg.attention_stages),
      num_groups=mcfg.num_groups,
      dropout=mcfg.dropout,
      out_channels=mcfg.out_channels,
      dtype=jnp.dtype(mcfg.dtype),
      zero_out=bool(mcfg.get("zero_out", False)),
      conv_kernel_grad=conv_lib.resolve_kernel_grad(mcfg.get("conv_kernel_grad", "auto"),
                                                    conv_library),
      attention_grad=attention_lib.check_grad(mcfg.get("attention_grad", "recompute")),
  )
