"""A small regression U-Net for colour mappings (RAW -> sRGB, sRGB -> RAW), no timestep.

Why not jisp.models.unet.UNet with a constant t: its timestep MLP and per-block embedding
projections would be dead weight, and its full-resolution attention is what makes it slow;
a colour mapping is mostly per-pixel with some spatial context. So: conv stages with
BasicBlocks (GroupNorm, Swish), strided-conv down / nearest-up + conv up, skip connections,
one global context vector (mean-pooled bottleneck features, added back everywhere) for the
image-level part of colour (white balance, exposure), and a residual on the input's first
three channels, so an untrained net starts near the identity.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jisp.models import norm as norm_lib


class Block(nn.Module):
  ch: int
  num_groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish")(x)
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(h)
    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish")(h)
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(h)
    if x.shape[-1] != self.ch:
      x = nn.Conv(self.ch, (1, 1), dtype=self.dtype)(x)
    return x + h


class ColorNet(nn.Module):
  base_channels: int = 32
  channel_mults: Sequence[int] = (1, 2, 4)
  num_groups: int = 8
  out_channels: int = 3
  residual: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: (B, H, W, C_in) in [0, 1]; H, W divisible by 2^(len(channel_mults) - 1)."""
    del train  # no dropout / batch statistics: same function at train and test time
    n = len(self.channel_mults)
    h = nn.Conv(self.base_channels, (3, 3), dtype=self.dtype, name="conv_in")(
        x.astype(self.dtype))
    skips = []
    for i, mult in enumerate(self.channel_mults):
      h = Block(self.base_channels * mult, self.num_groups, self.dtype, name=f"down{i}")(h)
      if i < n - 1:
        skips.append(h)
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                    name=f"down{i}_pool")(h)
    g = jnp.mean(h, axis=(1, 2))
    g = nn.Dense(h.shape[-1], dtype=self.dtype, name="global_1")(g)
    g = nn.Dense(h.shape[-1], dtype=self.dtype, name="global_2")(nn.swish(g))
    h = h + g[:, None, None, :]
    for i in reversed(range(n - 1)):
      ch = self.base_channels * self.channel_mults[i]
      b, hh, ww, c = h.shape
      h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
      h = nn.Conv(ch, (3, 3), dtype=self.dtype, name=f"up{i}_conv")(h)
      h = Block(ch, self.num_groups, self.dtype, name=f"up{i}")(
          jnp.concatenate([h, skips.pop()], axis=-1))
    h = norm_lib.GroupNorm(self.num_groups, dtype=self.dtype, activation="swish",
                           name="norm_out")(h)
    # Zero-initialised output conv: with the residual the untrained net is the identity.
    out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros,
                  name="conv_out")(h).astype(jnp.float32)
    if self.residual:
      out = out + x[..., :self.out_channels].astype(jnp.float32)
    return out


def from_config(mcfg):
  """The regression net of `model.name`: "color_net" (this module) or "sid_unet" (the SID
  U-Net baseline, jisp.models.sid_unet)."""
  if mcfg.get("name", "color_net") == "sid_unet":
    from jisp.models import sid_unet
    return sid_unet.from_config(mcfg)
  return ColorNet(
      base_channels=mcfg.base_channels,
      channel_mults=tuple(mcfg.channel_mults),
      num_groups=mcfg.num_groups,
      out_channels=mcfg.get("out_channels", 3),
      residual=mcfg.get("residual", True),
      dtype=jnp.dtype(mcfg.get("dtype", "float32")),
  )
