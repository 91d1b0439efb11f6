"""The "Learning to See in the Dark" U-Net (Chen et al. 2018), InvISP's "U-net" baseline.

Layout (facts from the SID paper's code, cchen156/Learning-to-See-in-the-Dark
train_Sony.py; ../shared/papers/ssdnet_spec.md section 6.2): five levels of widths
32/64/128/256/512, each two 3x3 convs with bias and LeakyReLU(0.2) (max(0.2 x, x));
2x2 max-pooling between encoder levels; each decoder level a 2x2 stride-2 transposed conv
(no bias, truncated-normal std 0.02 init) to the skip's width, concatenation with the skip,
two 3x3 convs + LeakyReLU; a final 1x1 conv (with bias, no activation). Convs are
Xavier-uniform with zero bias (TF-slim's defaults).

Uses here (`space_to_depth` in, `head` out):
  rgb3     sRGB (H, W, 3) -> space-to-depth(2) (H/2, W/2, 12) -> U-Net -> 1x1 conv to 12
           -> depth-to-space(2) -> (H, W, 3): the InvISP-protocol RAW (the spec's
           "plain U-Net regression", 7,762,572 parameters)
  sid      SID's own 4 -> 12 use (packed RAW in, depth-to-space to an RGB image at twice
           its resolution): 7,760,268 parameters, the count the paper's code gives.
Input sides that are not multiples of 32 (2 for space-to-depth times 4 poolings) are
mirror-padded at the bottom/right and the output cropped back.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jisp.core.errors import ConfigError

HEADS = {"rgb3": (12, 12), "sid": (4, 12)}
# head -> (channels into the U-Net, channels of the last 1x1 conv before depth-to-space)


def lrelu(x):
  return jnp.maximum(0.2 * x, x)


def space_to_depth(x, r: int = 2):
  """(B, H, W, C) -> (B, H/r, W/r, C r^2), channel (r i + j) C + c holding pixel (i, j) of
  each r x r tile (TensorFlow's space_to_depth, which SID's depth_to_space inverts)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // r, w // r, r * r * c)


def depth_to_space(x, r: int = 2):
  """Inverse of space_to_depth: (B, h, w, C r^2) -> (B, h r, w r, C)."""
  b, h, w, cr = x.shape
  c = cr // (r * r)
  x = x.reshape(b, h, w, r, r, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c)


def _conv(features, k, name, dtype):
  return nn.Conv(features, (k, k), padding="SAME", use_bias=True, dtype=dtype,
                 kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.zeros, name=name)


class SIDUNet(nn.Module):
  widths: Sequence[int] = (32, 64, 128, 256, 512)
  head: str = "rgb3"
  dtype: jnp.dtype = jnp.float32

  @property
  def multiple(self) -> int:
    """What input H, W are padded to a multiple of."""
    return (2 if self.head != "sid" else 1) * 2 ** (len(self.widths) - 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x (B, H, W, C_in) -> (B, H, W, 3) (rgb3) or (B, 2H, 2W, 3) (sid); unclipped."""
    del train
    if self.head not in HEADS:
      raise ConfigError(f"bad value for config key 'model.head': {self.head!r} (expected one "
                        f"of {', '.join(HEADS)})")
    _, out_ch = HEADS[self.head]
    b, h, w, _ = x.shape
    m = self.multiple
    ph, pw = -h % m, -w % m
    if ph or pw:
      x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    x = x.astype(self.dtype)
    if self.head != "sid":
      x = space_to_depth(x)
    skips = []
    n = len(self.widths)
    for i, ch in enumerate(self.widths):
      x = lrelu(_conv(ch, 3, f"conv{i + 1}_1", self.dtype)(x))
      x = lrelu(_conv(ch, 3, f"conv{i + 1}_2", self.dtype)(x))
      if i < n - 1:
        skips.append(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    for i in reversed(range(n - 1)):
      ch = self.widths[i]
      k = 2 * n - 1 - i  # SID's names: up6 / conv6 ... up9 / conv9
      x = nn.ConvTranspose(ch, (2, 2), strides=(2, 2), padding="SAME", use_bias=False,
                           dtype=self.dtype,
                           kernel_init=nn.initializers.truncated_normal(0.02),
                           name=f"up{k}")(x)
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = lrelu(_conv(ch, 3, f"conv{k}_1", self.dtype)(x))
      x = lrelu(_conv(ch, 3, f"conv{k}_2", self.dtype)(x))
    out = depth_to_space(_conv(out_ch, 1, "conv_out", self.dtype)(x).astype(jnp.float32))
    s = out.shape[1] // (h + ph)  # 1 (rgb3) or 2 (sid)
    return out[:, :h * s, :w * s]


def from_config(mcfg) -> SIDUNet:
  return SIDUNet(widths=tuple(mcfg.get("widths", (32, 64, 128, 256, 512))),
                 head=str(mcfg.get("head", "rgb3")),
                 dtype=jnp.dtype(mcfg.get("dtype", "float32")))


def param_count(params) -> int:
  return sum(int(a.size) for a in jax.tree.leaves(params))
