"""InvISP's invertible network: a stack of (invertible 1x1 conv -> affine coupling) blocks.

One block, exactly as the official InvISP code (yzxing87/Invertible-ISP, model/model.py):

  x  <- W x                                  invertible 1x1 conv, LU-parametrised (Glow)
  x1, x2 = x[..., :1], x[..., 1:]           split 1 / 2 channels
  y1 = x1 + F(x2)
  s  = 0.8 * (2 sigmoid(H(y1)) - 1)          scale bounded to (-0.8, 0.8)
  y2 = x2 * exp(s) + G(y1)

and its exact inverse with the same parameters:

  s  = 0.8 * (2 sigmoid(H(y1)) - 1);  x2 = (y2 - G(y1)) * exp(-s);  x1 = y1 - F(x2);
  x  <- W^-1 [x1, x2].

F, G, H are small dense blocks (5 3x3 convs, growth 32, LeakyReLU 0.2, each conv seeing
the concatenation of all earlier features). log|det J| of a block is H*W*sum(log_s) (the
1x1 conv) + sum(s) (the coupling: it is a shear with unit determinant followed by a
diagonal scaling of x2 by exp(s)).

Choices, and why:
  * No squeeze / invertible downsampling. Glow's SqueezeLayer is present in the official
    modules.py, but InvISPNet never uses it: the net works on the full-resolution
    demosaiced 3-channel RAW, which the paper also says (the bilinear demosaic makes
    input and output the same size). We follow the code that produced the paper's numbers.
  * The 1x1 conv is W = L (U + diag(exp(log_s))) with the permutation fixed to the
    identity and the diagonal signs fixed to +1, so nothing non-trainable sits in the
    params pytree (an optimiser with weight decay would otherwise corrupt a stored
    permutation matrix). It starts, as in Glow, from a random rotation: we draw Q by QR,
    take its pivoted LU Q = P L U and use P^T Q D (D = signs of diag U), which is still a
    rotation and factors as L (U D) with no pivoting and a positive diagonal; the pivoting
    keeps |L| <= 1, i.e. well conditioned. W is invertible for every parameter value.
  * Initialisation: the official net ends its constructor with a xavier-normal re-init of
    every conv (bias 0), overriding the dense block's own "0.1 x xavier, last conv zero"
    init; we reproduce the effective init (torch's xavier_normal_: N(0, 2/(fan_in +
    fan_out)), not truncated). `zero_init_last=True` zeroes each subnet's last conv, so
    every coupling starts as the identity.
  * Parameters are stacked over blocks and the stack is a `lax.scan` (the inverse is the
    same scan run backwards). By default the scan is fully unrolled: on XLA:CPU the
    backward pass of a rolled scan over these convolutions is several times slower
    (README "Flow ISP"); `scan=True` keeps it rolled, for compile time independent of
    the block count.
  * Convolutions and the 1x1 mixing use HIGHEST precision by default: on accelerators the
    default precision (TF32 / bf16 passes) rounds every conv to ~1e-3 relative, and the
    inverse recomputes F, G, H on its own reconstruction, so its error would grow with
    it. On CPU both are exact fp32.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CLAMP = 0.8


def _precision(name):
  if name in (None, "default"):
    return None
  if name == "highest":
    return jax.lax.Precision.HIGHEST
  if name == "high":
    return jax.lax.Precision.HIGH
  raise ValueError(f"unknown precision {name!r} (default, high, highest)")


class DenseBlock(nn.Module):
  """The official 'DBNet' subnet: 4 growth convs + 1 output conv, dense connections."""
  features: int
  growth: int = 32
  zero_init_last: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")  # torch xavier_normal_
    feats = [x]
    for i in range(4):
      h = nn.Conv(self.growth, (3, 3), padding="SAME", kernel_init=init,
                  precision=self.precision, name=f"conv{i + 1}")(jnp.concatenate(feats, -1))
      feats.append(nn.leaky_relu(h, 0.2))
    last_init = nn.initializers.zeros if self.zero_init_last else init
    return nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=last_init,
                   precision=self.precision, name="conv5")(jnp.concatenate(feats, -1))


# --------------------------------------------------------------------------- 1x1 conv

def init_conv1x1(rng, channels: int) -> dict:
  """LU parameters of a random rotation (see module docstring); jit-able."""
  q, _ = jnp.linalg.qr(jax.random.normal(rng, (channels, channels), jnp.float32))
  _, lower, upper = jax.scipy.linalg.lu(q)
  d = jnp.where(jnp.diag(upper) < 0, -1.0, 1.0)
  upper = upper * d[None, :]           # (P^T Q) D = L (U D): positive diagonal
  return {"lower": jnp.tril(lower, -1), "upper": jnp.triu(upper, 1),
          "log_s": jnp.log(jnp.abs(jnp.diag(upper)))}


def conv1x1_factors(p):
  """(L, U) with W = L @ U; L unit lower triangular, U upper with diag exp(log_s)."""
  c = p["log_s"].shape[-1]
  eye = jnp.eye(c, dtype=p["log_s"].dtype)
  lower = jnp.tril(p["lower"], -1) + eye
  upper = jnp.triu(p["upper"], 1) + jnp.diag(jnp.exp(p["log_s"]))
  return lower, upper


def conv1x1_weight(p, inverse: bool = False):
  lower, upper = conv1x1_factors(p)
  if not inverse:
    return lower @ upper
  eye = jnp.eye(lower.shape[0], dtype=lower.dtype)
  # W^-1 = U^-1 L^-1 by two triangular solves: exact to rounding, never a general inverse.
  linv = jax.scipy.linalg.solve_triangular(lower, eye, lower=True, unit_diagonal=True)
  return jax.scipy.linalg.solve_triangular(upper, linv, lower=False)


def _mix(x, w, precision):
  """Per-pixel matrix: out[..., d] = sum_c w[d, c] x[..., c]."""
  return jnp.einsum("...c,dc->...d", x, w, precision=precision)


def _xavier_fill(rng, shapes, zero_last: bool):
  """Conv kernels ~ N(0, 2 / (fan_in + fan_out)) (torch's xavier_normal_, what the official
  net ends up with), biases 0; conv5 kernels 0 when `zero_last`.

  One random draw for the whole tree: per-leaf initialisers make XLA compile one PRNG
  computation per conv (several seconds of compile on CPU for a single dense block).
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  kernels = [(i, l) for i, (path, l) in enumerate(leaves) if len(l.shape) == 4]
  total = sum(int(np.prod(l.shape)) for _, l in kernels)
  z = jax.random.normal(rng, (total,), jnp.float32)
  out = [jnp.zeros(l.shape, l.dtype) for _, l in leaves]
  off = 0
  for i, l in kernels:
    n = int(np.prod(l.shape))
    kh, kw, cin, cout = l.shape
    std = np.sqrt(2.0 / (kh * kw * (cin + cout)))
    path = jax.tree_util.keystr(leaves[i][0])
    scale = 0.0 if (zero_last and "conv5" in path) else std
    out[i] = (z[off:off + n] * scale).reshape(l.shape)
    off += n
  return jax.tree_util.tree_unflatten(treedef, out)


# --------------------------------------------------------------------------- the flow

@dataclasses.dataclass(frozen=True)
class InvISPFlow:
  """Stateless description of the network; parameters are a pytree stacked over blocks."""
  num_blocks: int = 8
  channels: int = 3
  split: int = 1              # channels of x1 (official: 1 of 3)
  growth: int = 32
  clamp: float = CLAMP
  zero_init_last: bool = False
  precision: str = "highest"
  scan: bool = False          # True: a rolled lax.scan (fast compile, slow CPU backward)

  def __post_init__(self):
    if self.num_blocks < 1:
      raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
    if not 0 < self.split < self.channels:
      raise ValueError(f"split must be in 1..channels-1, got {self.split} of {self.channels}")

  def _subnets(self):
    prec = _precision(self.precision)
    n1, n2 = self.split, self.channels - self.split
    mk = lambda f: DenseBlock(f, self.growth, self.zero_init_last, prec)
    return {"F": mk(n1), "G": mk(n2), "H": mk(n2)}

  def init_block(self, rng) -> dict:
    k_w, k_nets = jax.random.split(rng)
    n1, n2 = self.split, self.channels - self.split
    nets = self._subnets()
    x1 = jax.ShapeDtypeStruct((1, 8, 8, n1), jnp.float32)
    x2 = jax.ShapeDtypeStruct((1, 8, 8, n2), jnp.float32)
    shapes = {name: jax.eval_shape(nets[name].init, k_nets, x)["params"]
              for name, x in (("F", x2), ("G", x1), ("H", x1))}
    return {"conv1x1": init_conv1x1(k_w, self.channels),
            **_xavier_fill(k_nets, shapes, self.zero_init_last)}

  def init(self, rng) -> dict:
    """Parameters of all blocks, each leaf with a leading axis of length num_blocks."""
    # jit: an eager vmap of Flax inits dispatches hundreds of tiny ops (tens of seconds).
    return jax.jit(jax.vmap(self.init_block))(jax.random.split(rng, self.num_blocks))

  @property
  def _unroll(self):
    return 1 if self.scan else self.num_blocks

  # ---- one block

  def _scale(self, nets, p, y1):
    return self.clamp * (2.0 * jax.nn.sigmoid(nets["H"].apply({"params": p["H"]}, y1)) - 1.0)

  def block_forward(self, p, x):
    """(y, logdet (B,)) of one block."""
    nets, prec = self._subnets(), _precision(self.precision)
    x = _mix(x, conv1x1_weight(p["conv1x1"]), prec)
    x1, x2 = x[..., :self.split], x[..., self.split:]
    y1 = x1 + nets["F"].apply({"params": p["F"]}, x2)
    s = self._scale(nets, p, y1)
    y2 = x2 * jnp.exp(s) + nets["G"].apply({"params": p["G"]}, y1)
    hw = x.shape[-3] * x.shape[-2]
    logdet = hw * jnp.sum(p["conv1x1"]["log_s"]) + jnp.sum(s, axis=(-3, -2, -1))
    return jnp.concatenate([y1, y2], axis=-1), logdet

  def block_inverse(self, p, y):
    """(x, logdet of the inverse map (B,)) of one block."""
    nets, prec = self._subnets(), _precision(self.precision)
    y1, y2 = y[..., :self.split], y[..., self.split:]
    s = self._scale(nets, p, y1)
    x2 = (y2 - nets["G"].apply({"params": p["G"]}, y1)) * jnp.exp(-s)
    x1 = y1 - nets["F"].apply({"params": p["F"]}, x2)
    x = _mix(jnp.concatenate([x1, x2], axis=-1), conv1x1_weight(p["conv1x1"], True), prec)
    hw = y.shape[-3] * y.shape[-2]
    logdet = -hw * jnp.sum(p["conv1x1"]["log_s"]) - jnp.sum(s, axis=(-3, -2, -1))
    return x, logdet

  # ---- the stack

  def forward_logdet(self, params, x):
    """RAW (B, H, W, C) -> (sRGB-side output (B, H, W, C), log|det df/dx| (B,))."""
    x = jnp.asarray(x, jnp.float32)

    def body(carry, p):
      h, ld = carry
      h, d = self.block_forward(p, h)
      return (h, ld + d), None

    (y, ld), _ = jax.lax.scan(body, (x, jnp.zeros(x.shape[:-3], jnp.float32)), params,
                              unroll=self._unroll)
    return y, ld

  def inverse_logdet(self, params, y):
    """sRGB side -> (RAW side, log|det df^-1/dy| (B,)); the blocks in reverse order."""
    y = jnp.asarray(y, jnp.float32)

    def body(carry, p):
      h, ld = carry
      h, d = self.block_inverse(p, h)
      return (h, ld + d), None

    (x, ld), _ = jax.lax.scan(body, (y, jnp.zeros(y.shape[:-3], jnp.float32)), params,
                              reverse=True, unroll=self._unroll)
    return x, ld

  def forward(self, params, x):
    return self.forward_logdet(params, x)[0]

  def inverse(self, params, y):
    return self.inverse_logdet(params, y)[0]


def from_config(mcfg, channels: int = 3) -> InvISPFlow:
  """InvISPFlow from a `model` config block (num_blocks, growth, zero_init_last, precision);
  `channels` > 3 for the video flow (frames stacked on channels), split = channels // 3."""
  return InvISPFlow(num_blocks=int(mcfg.num_blocks), channels=int(channels),
                    split=max(1, int(channels) // 3), growth=int(mcfg.growth),
                    clamp=float(mcfg.get("clamp", CLAMP)),
                    zero_init_last=bool(mcfg.get("zero_init_last", False)),
                    precision=str(mcfg.get("precision", "highest")),
                    scan=bool(mcfg.get("scan", False)))
