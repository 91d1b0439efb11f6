"""SSDNet (Zou & Zhang, "Learned Reverse ISP with Soft Supervision", AIM 2022) in Flax.

A Restormer-style 4-level U-Net whose blocks are CFMs (context fusion modules): bias-free
LayerNorm -> EMDTA (Restormer's transposed channel attention widened by a parallel
depthwise k x k convolution and two cross-gates) -> bias-free LayerNorm -> GDFN (gated
depthwise feed-forward, expansion 2.66). Layout as the official code (the paper's text is
looser; ../shared/papers/ssdnet_spec.md section 2):

  y -> conv3 3->3 -> conv3 3->C -> enc1 (C) -> down -> enc2 (2C) -> down -> enc3 (4C)
    -> down -> latent (8C) -> up -> [.,enc3] 1x1 -> dec3 -> up -> [.,enc2] 1x1 -> dec2
    -> up -> [.,enc1] (no 1x1: 2C) -> dec1 -> refinement -> conv3 2C->3, GELU -> r
  y_r = y + r;  mu = clip(head(y_r), 0, 1);  sigma = clip(sigma_head(y_r), 0, 1)

down = conv3 C->C/2 + pixel-unshuffle(2), up = conv3 C->2C + pixel-shuffle(2). Heads:
"packed4" = conv3 3->1 then pixel-unshuffle(2): packed RGGB at half resolution in jisp's
(R, Gr, Gb, B) order (AIM); "rgb3" = conv3 3->3 at full resolution (the InvISP / FiveK
protocol's demosaiced RAW). The sigma head (conv3 3->2C, GELU, CFMs, conv3 2C->out,
unshuffle for packed4) is only run when asked for, so params without it serve mu.

Every conv is bias-free except the depthwise conv branch (as the code); initialisation is
PyTorch's default (U(+-1/sqrt(fan_in)) kernels), GELU the exact erf form (PyTorch's
default; JAX's default is the tanh approximation).

The CFM variants of the paper's Table 1 are `cfm`: "none" (plain Restormer MDTA, no conv
branch), "conv" (conv branch, no gates), "ca" (channel gate GAP(conv) -> V), "sa" (spatial
gate attention -> conv), "ca_sa" (both; the paper's model). `kernel_size` is Fig. 4's.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jisp.core.errors import ConfigError

CFM_VARIANTS = ("none", "conv", "ca", "sa", "ca_sa")
LAYERNORMS = ("bias_free", "with_bias")
OUTPUTS = ("packed4", "rgb3")
LN_EPS = 1e-5
NORM_EPS = 1e-12  # F.normalize's floor on the norm

# PyTorch's Conv2d default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), the variance
# 1/(3 fan_in), fan_in = kh * kw * in/groups read off the kernel shape as torch does.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / float(np.sqrt(fan_in))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def pixel_unshuffle(x, r: int = 2):
  """(B, H, W, C) -> (B, H/r, W/r, C r^2), output channel c r^2 + r i + j holding the pixel
  at offset (i, j) of each r x r tile: PyTorch's PixelUnshuffle in NHWC. On a one-channel
  RGGB mosaic it is jisp.isp.bayer.pack(., "RGGB")."""
  b, h, w, c = x.shape
  if h % r or w % r:
    raise ValueError(f"pixel_unshuffle needs H, W divisible by {r}, got {(h, w)}")
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r: int = 2):
  """Inverse of pixel_unshuffle: (B, h, w, C r^2) -> (B, h r, w r, C)."""
  b, h, w, cr = x.shape
  if cr % (r * r):
    raise ValueError(f"pixel_shuffle needs channels divisible by {r * r}, got {cr}")
  c = cr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


def conv(features: int, k: int, name: str, dtype=jnp.float32,
         kernel_init=TORCH_KERNEL_INIT) -> nn.Conv:
  """Stride-1, zero-'SAME', bias-free dense conv, by default with PyTorch's initialisation."""
  return nn.Conv(features, (k, k), padding="SAME", use_bias=False,
                 kernel_init=kernel_init, dtype=dtype, name=name)


class DepthwiseConv(nn.Module):
  """k x k depthwise conv, zero 'SAME' padding, kernel (k, k, 1, C) as nn.Conv's grouped
  one. On CPU a 3 x 3 runs as a sum of 9 shifted products, which XLA:CPU fuses and runs
  several times faster than its grouped convolution; larger kernels stay grouped there
  (shifted, their compile time grows with k^2 and they run no faster), as does every
  kernel on other backends."""
  kernel_size: int
  bias: bool = False
  impl: str = "auto"   # "auto", "shifted" or "grouped"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    w = self.param("kernel", TORCH_KERNEL_INIT, (k, k, 1, c)).astype(self.dtype)
    x = x.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "shifted" if jax.default_backend() == "cpu" and k <= 3 else "grouped"
    if impl == "grouped":
      out = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=c,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      h, wd, p = x.shape[1], x.shape[2], k // 2
      xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      out = sum(xp[:, i:i + h, j:j + wd, :] * w[i, j, 0] for i in range(k) for j in range(k))
    if self.bias:
      out = out + self.param("bias", torch_bias_init(k * k), (c,)).astype(self.dtype)
    return out


class LayerNorm(nn.Module):
  """Per-pixel LayerNorm over channels. Bias-free (SSDNet's): x / sqrt(Var_c x + eps) * w,
  the variance mean-centred but the numerator not; "with_bias" is the ordinary one."""
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    xf = x.astype(jnp.float32)
    var = jnp.var(xf, axis=-1, keepdims=True)
    w = self.param("weight", nn.initializers.ones, (c,))
    if self.bias:
      out = (xf - jnp.mean(xf, -1, keepdims=True)) / jnp.sqrt(var + LN_EPS) * w
      out = out + self.param("bias", nn.initializers.zeros, (c,))
    else:
      out = xf / jnp.sqrt(var + LN_EPS) * w
    return out.astype(x.dtype)


def _gate(x, c: int, prefix: str, dtype):
  """sigmoid(1x1(GELU(1x1(x)))), both bias-free C -> C (the code's CALayer, reduction 1)."""
  g = conv(c, 1, f"{prefix}_1", dtype)(x)
  g = conv(c, 1, f"{prefix}_2", dtype)(gelu(g))
  return jax.nn.sigmoid(g)


class EMDTA(nn.Module):
  """Enhanced multi-Dconv-head transposed attention (attention over channels, d x d per
  head), with the large-kernel depthwise branch and its gates per `cfm`. Sows the
  attention map (B, heads, d, d) as intermediates/attn."""
  heads: int
  cfm: str = "ca_sa"
  kernel_size: int = 7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    nh = self.heads
    if c % nh:
      raise ValueError(f"EMDTA: {c} channels do not split into {nh} heads")
    d = c // nh
    qkv = conv(3 * c, 1, "qkv", dtype=self.dtype)(x)
    qkv = DepthwiseConv(3, dtype=self.dtype, name="qkv_dwconv")(qkv)
    q, k, v = jnp.split(qkv, 3, axis=-1)

    def to_heads(t):  # channel = head * d + c (the code's 'b (head c) h w'), space flattened
      return t.reshape(b, h * w, nh, d).transpose(0, 2, 3, 1).astype(jnp.float32)

    def unit(t):
      # t / max(|t|, eps) as F.normalize, with the floor under the square root: the
      # gradient of jnp.linalg.norm at an all-zero row (a black patch through the
      # bias-free layers) is NaN, this one is finite.
      sq = jnp.sum(t * t, axis=-1, keepdims=True)
      return t * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))

    qh, kh = unit(to_heads(q)), unit(to_heads(k))
    tau = self.param("temperature", nn.initializers.ones, (nh, 1, 1))
    attn = jax.nn.softmax(jnp.einsum("bncl,bnel->bnce", qh, kh) * tau, axis=-1)
    self.sow("intermediates", "attn", attn)

    branch = self.cfm != "none"
    if branch:
      yc = DepthwiseConv(self.kernel_size, bias=True, dtype=self.dtype, name="conv_branch")(x)
      if self.cfm in ("ca", "ca_sa"):   # channel gate: conv branch -> V
        v = v * _gate(jnp.mean(yc, axis=(1, 2), keepdims=True), c, "ca", self.dtype)
    out = jnp.einsum("bnce,bnel->bncl", attn.astype(self.dtype), to_heads(v).astype(self.dtype))
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    if not branch:
      return conv(c, 1, "project_out", dtype=self.dtype)(out)
    if self.cfm in ("sa", "ca_sa"):     # spatial gate: attention -> conv branch
      yc = yc * _gate(out, c, "sa", self.dtype)
    return conv(c, 1, "project_out", dtype=self.dtype)(
        jnp.concatenate([yc, out], axis=-1))


class GDFN(nn.Module):
  """Gated-Dconv feed-forward: 1x1 C->2m, depthwise 3x3, GELU(first m) * (second m), 1x1."""
  expansion: float = 2.66
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    m = int(c * self.expansion)
    z = conv(2 * m, 1, "project_in", dtype=self.dtype)(x)
    z = DepthwiseConv(3, dtype=self.dtype, name="dwconv")(z)
    z1, z2 = jnp.split(z, 2, axis=-1)
    return conv(c, 1, "project_out", dtype=self.dtype)(gelu(z1) * z2)


class CFM(nn.Module):
  """x + EMDTA(LN(x)), then + GDFN(LN(.)): one SSDNet block."""
  heads: int
  expansion: float = 2.66
  cfm: str = "ca_sa"
  kernel_size: int = 7
  ln_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x + EMDTA(self.heads, self.cfm, self.kernel_size, self.dtype, name="attn")(
        LayerNorm(self.ln_bias, name="norm1")(x))
    return x + GDFN(self.expansion, self.dtype, name="ffn")(LayerNorm(self.ln_bias, name="norm2")(x))


class CFMStack(nn.Module):
  n: int
  heads: int
  expansion: float = 2.66
  cfm: str = "ca_sa"
  kernel_size: int = 7
  ln_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.n):
      x = CFM(self.heads, self.expansion, self.cfm, self.kernel_size, self.ln_bias, self.dtype,
              name=f"block{i}")(x)
    return x


class SSDNet(nn.Module):
  """sRGB (B, H, W, 3) in [0, 1] -> {"mu": RAW, "sigma": error map (when sigma=True)}.

  output "packed4": (B, H/2, W/2, 4) packed RGGB; "rgb3": (B, H, W, 3). dec_blocks are in
  decoding order (level 3, 2, 1). H, W that are not multiples of `pad_multiple` (at least
  8, the three 2x downsamples) are reflect-padded at the bottom/right, which keeps the
  top-left Bayer phase, and the outputs cropped back; packed4 needs even H, W.
  """
  dim: int = 48
  enc_blocks: Sequence[int] = (4, 6, 6, 8)
  dec_blocks: Sequence[int] = (6, 6, 4)
  refinement_blocks: int = 4
  sigma_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  expansion: float = 2.66
  cfm: str = "ca_sa"
  kernel_size: int = 7
  layernorm: str = "bias_free"
  output: str = "packed4"
  pad_multiple: int = 8
  dtype: jnp.dtype = jnp.float32

  def _stack(self, n, heads, name):
    return CFMStack(n, heads, self.expansion, self.cfm, self.kernel_size,
                    self.layernorm == "with_bias", self.dtype, name=name)

  @property
  def out_channels(self) -> int:
    return 4 if self.output == "packed4" else 3

  @nn.compact
  def __call__(self, y, sigma: bool = False):
    if self.output not in OUTPUTS:
      raise ValueError(f"SSDNet output must be one of {OUTPUTS}, got {self.output!r}")
    b, h, w, _ = y.shape
    if self.output == "packed4" and (h % 2 or w % 2):
      raise ValueError(f"SSDNet packed4 output needs even H, W, got {(h, w)}")
    y = y.astype(jnp.float32)
    m = self.pad_multiple
    ph, pw = (-h) % m, (-w) % m
    yp = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else y

    c, dt = self.dim, self.dtype
    x = conv(3, 3, "pack_first", dtype=dt)(yp)
    x = conv(c, 3, "patch_embed", dtype=dt)(x)
    s1 = self._stack(self.enc_blocks[0], self.heads[0], "encoder1")(x)
    x = pixel_unshuffle(conv(c // 2, 3, "down1_2", dtype=dt)(s1))
    s2 = self._stack(self.enc_blocks[1], self.heads[1], "encoder2")(x)
    x = pixel_unshuffle(conv(c, 3, "down2_3", dtype=dt)(s2))
    s3 = self._stack(self.enc_blocks[2], self.heads[2], "encoder3")(x)
    x = pixel_unshuffle(conv(2 * c, 3, "down3_4", dtype=dt)(s3))
    x = self._stack(self.enc_blocks[3], self.heads[3], "latent")(x)

    x = pixel_shuffle(conv(16 * c, 3, "up4_3", dtype=dt)(x))
    x = conv(4 * c, 1, "reduce3", dtype=dt)(jnp.concatenate([x, s3], -1))
    x = self._stack(self.dec_blocks[0], self.heads[2], "decoder3")(x)
    x = pixel_shuffle(conv(8 * c, 3, "up3_2", dtype=dt)(x))
    x = conv(2 * c, 1, "reduce2", dtype=dt)(jnp.concatenate([x, s2], -1))
    x = self._stack(self.dec_blocks[1], self.heads[1], "decoder2")(x)
    x = pixel_shuffle(conv(4 * c, 3, "up2_1", dtype=dt)(x))
    x = jnp.concatenate([x, s1], -1)
    x = self._stack(self.dec_blocks[2], self.heads[0], "decoder1")(x)
    x = self._stack(self.refinement_blocks, self.heads[0], "refinement")(x)
    r = gelu(conv(3, 3, "refinement_out", dtype=dt)(x))
    y_r = r.astype(jnp.float32) + yp   # the raw input, not pack_first's output (as the code)

    out = {"mu": self._head(y_r, "out", h, w)}
    if sigma:
      s = gelu(conv(2 * c, 3, "sigma_in", dtype=dt)(y_r))
      s = self._stack(self.sigma_blocks, self.heads[0], "sigma_blocks")(s)
      out["sigma"] = self._head(s, "sigma_out", h, w)
    return out

  def _head(self, x, name, h, w):
    """Full-resolution features -> clipped output at the unpadded size."""
    if self.output == "packed4":
      o = pixel_unshuffle(conv(1, 3, name, dtype=self.dtype)(x))
      o = o[:, :h // 2, :w // 2]
    else:
      o = conv(3, 3, name, dtype=self.dtype)(x)[:, :h, :w]
    return jnp.clip(o.astype(jnp.float32), 0.0, 1.0)


SIGMA_PARAMS = ("sigma_in", "sigma_blocks", "sigma_out")


def strip_sigma(params):
  """params without the sigma head (what serves mu: the training-resampling deployment)."""
  return {k: v for k, v in params.items() if k not in SIGMA_PARAMS}


def from_config(mcfg) -> SSDNet:
  """SSDNet from the `model` config block; ConfigError naming the key on a bad value."""
  def bad(key, why):
    return ConfigError(f"bad value for config key 'model.{key}': {mcfg[key]!r} ({why})")

  if mcfg.cfm not in CFM_VARIANTS:
    raise bad("cfm", f"expected one of {', '.join(CFM_VARIANTS)}")
  if mcfg.layernorm not in LAYERNORMS:
    raise bad("layernorm", f"expected one of {', '.join(LAYERNORMS)}")
  if mcfg.output not in OUTPUTS:
    raise bad("output", f"expected one of {', '.join(OUTPUTS)}")
  if mcfg.kernel_size < 1 or mcfg.kernel_size % 2 == 0:
    raise bad("kernel_size", "must be odd and >= 1")
  if mcfg.dim < 2 or mcfg.dim % 2:
    raise bad("dim", "must be even (the first downsample halves it)")
  if len(mcfg.enc_blocks) != 4 or len(mcfg.heads) != 4 or len(mcfg.dec_blocks) != 3:
    raise ConfigError("config keys 'model.enc_blocks', 'model.heads', 'model.dec_blocks' "
                      "need 4, 4 and 3 entries (levels 1-4; decoder levels 3, 2, 1)")
  for lvl, (mult, nh) in enumerate(zip((1, 2, 4, 8), mcfg.heads)):
    if nh < 1 or (mcfg.dim * mult) % nh or (lvl == 0 and (2 * mcfg.dim) % nh):
      raise bad("heads", f"level {lvl + 1}'s {mcfg.dim * mult} channels do not split into "
                f"{nh} heads")
  if mcfg.pad_multiple < 8 or mcfg.pad_multiple % 8:
    raise bad("pad_multiple", "must be a multiple of 8")
  return SSDNet(
      dim=int(mcfg.dim), enc_blocks=tuple(mcfg.enc_blocks), dec_blocks=tuple(mcfg.dec_blocks),
      refinement_blocks=int(mcfg.refinement_blocks), sigma_blocks=int(mcfg.sigma_blocks),
      heads=tuple(mcfg.heads), expansion=float(mcfg.expansion), cfm=mcfg.cfm,
      kernel_size=int(mcfg.kernel_size), layernorm=mcfg.layernorm, output=mcfg.output,
      pad_multiple=int(mcfg.pad_multiple), dtype=jnp.dtype(mcfg.dtype))
