"""A differentiable JPEG simulator (baseline JPEG, as libjpeg encodes and decodes it).

  RGB [0,1] -> x255 -> YCbCr (JFIF, full range) -> chroma box-downsampling (4:2:0 / 4:2:2)
  -> edge-replicate to whole MCUs -> level shift -128 -> 8x8 DCT-II -> / table
  -> ROUND -> x table -> IDCT -> +128 -> chroma "fancy" (triangle) upsampling
  -> RGB -> clip [0,255] -> /255 -> crop to H x W

Only ROUND loses information (entropy coding is lossless and skipped, as in InvISP), so
the simulator's fidelity to a real codec rests on the tables and the rounding. The tables
are the standard Annex-K tables scaled exactly as libjpeg's `jpeg_quality_scaling` does
(integer quality, integer arithmetic, clamped to [1, 255]). The chroma filters are the
ones libjpeg uses by default: box average when encoding, triangle ("fancy") interpolation
when decoding, over the chroma samples that cover the image (the MCU padding is coded but
never interpolated from, as in libjpeg's jdsample.c).

The rest of a real codec's error is 8-bit arithmetic: libjpeg stores every plane as 8-bit
samples (colour conversion, downsampling, IDCT output and upsampling each round, with
fixed-point constants and alternating rounding biases). `integer_samples=True` reproduces
those steps exactly (forward pass; gradients pass straight through them), which leaves
only libjpeg's integer DCT as a difference; the default keeps the planes real-valued, the
model InvISP trains with. tests/test_jpeg.py measures both against Pillow's libjpeg.

`variant="diffjpeg"` is instead the simulator of the official InvISP code (a copy of the
DiffJPEG project): real-valued tables (transposed, neither rounded nor clamped) and
repeated chroma samples. It is further from a real JPEG; it is there to reproduce the
official training.

Rounding choices (`rounding=`):
  "fourier"  InvISP's smooth rounding, Eq. 10 of the paper (K terms; paper K=10, the
             official code 9). See `fourier_round` for its error bound.
  "ste"      straight-through: round() forward, identity gradient.
  "dsq"      Differentiable Soft Quantization (Gong et al. 2019) with sharpness `dsq_k`,
             the alternative the paper compares against (Table 1).
  "cubic"    round(x) + (x - round(x))^3, the rounding of the widely used DiffJPEG code.
  "round"    hard rounding (zero gradient): the real codec, for evaluation.

Everything is jnp and shape-generic: images are (..., H, W, 3) with any H, W >= 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# ITU-T T.81 Annex K, Tables K.1 and K.2 (quality 50 in libjpeg's scaling).
LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
CHROMA_TABLE = np.array([
    [17, 18, 24, 47, 99, 99, 99, 99],
    [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99],
    [47, 66, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99]], np.float32)

SUBSAMPLINGS = {"4:4:4": (1, 1), "4:2:2": (1, 2), "4:2:0": (2, 2)}  # (vertical, horizontal)
ROUNDINGS = ("fourier", "ste", "dsq", "cubic", "round")
VARIANTS = ("libjpeg", "diffjpeg")

_HI = jax.lax.Precision.HIGHEST


def _dct_matrix() -> np.ndarray:
  """Orthonormal 8-point DCT-II: coef = D @ block @ D.T, block = D.T @ coef @ D."""
  n = np.arange(8)
  d = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
  d[0] /= np.sqrt(2)
  return d.astype(np.float32)


DCT = _dct_matrix()


# --------------------------------------------------------------------------- tables

def quality_scale(quality):
  """libjpeg's `jpeg_quality_scaling`: 5000 // q below 50, else 200 - 2q, q in [1, 100].

  libjpeg's quality is an integer, so a real-valued one (a random draw, a traced value) is
  rounded to the nearest integer first: every quality then names tables a real encoder makes.
  """
  q = jnp.clip(jnp.round(jnp.asarray(quality, jnp.float32)), 1.0, 100.0)
  return jnp.where(q < 50, jnp.floor(5000.0 / q), 200.0 - 2.0 * q)


def scale_table(base, scale):
  """libjpeg's integer scaling: floor((base * scale + 50) / 100), clamped to [1, 255]."""
  t = jnp.floor((jnp.asarray(base, jnp.float32) * scale + 50.0) / 100.0)
  return jnp.clip(t, 1.0, 255.0)


def quant_tables(quality):
  """(luma, chroma) (8, 8) float32 tables of a baseline JPEG at `quality` (jit-able)."""
  s = quality_scale(quality)
  return scale_table(LUMA_TABLE, s), scale_table(CHROMA_TABLE, s)


def diffjpeg_tables(quality):
  """The tables of the DiffJPEG code that the official InvISP trains with: the Annex-K
  tables transposed, times the real factor (5000/q or 200 - 2q) / 100, neither rounded
  nor clamped (utils/JPEG_utils.py there)."""
  q = jnp.asarray(quality, jnp.float32)
  factor = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0
  return jnp.asarray(LUMA_TABLE.T) * factor, jnp.asarray(CHROMA_TABLE.T) * factor


# --------------------------------------------------------------------------- rounding

def fourier_round(x, terms: int = 10):
  """InvISP's differentiable rounding (paper Eq. 10), the K-term Fourier series of round():

    Q_K(x) = x - (1/pi) * sum_{k=1..K} (-1)^(k+1) / k * sin(2 pi k x)

  since x - round(x) = (1/pi) sum_k (-1)^(k+1) sin(2 pi k x) / k (the sawtooth's series).
  Error bound (Abel summation of the tail, partial sums of sin(k phi) being bounded by
  1/|sin(phi/2)|): for every x that is not a half-integer,

    |Q_K(x) - round(x)| <= 1 / (pi (K + 1) |cos(pi x)|) <= 1 / (2 pi (K + 1) d),

  d = distance of x to the nearest half-integer. So Q_K -> round uniformly on every set
  that keeps away from the half-integers, at rate 1/K; at the half-integers themselves
  Q_K(x) = x (the series cannot jump), an unavoidable 0.5 gap that shrinks to a 1/K-wide
  band (Gibbs). Tested in tests/test_jpeg.py.
  """
  x = jnp.asarray(x)
  k = jnp.arange(1, int(terms) + 1, dtype=x.dtype)
  coef = ((-1.0) ** (k + 1)) / k
  return x - jnp.sum(coef * jnp.sin(2.0 * jnp.pi * k * x[..., None]), axis=-1) / jnp.pi


def fourier_round_bound(x, terms: int):
  """The error bound 1 / (pi (K+1) |cos(pi x)|) of `fourier_round` (inf at half-integers)."""
  return 1.0 / (np.pi * (terms + 1) * np.abs(np.cos(np.pi * np.asarray(x, np.float64))))


def ste_round(x):
  """round() in the forward pass, identity gradient (straight-through estimator)."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def dsq_round(x, k: float = 10.0):
  """Soft rounding of DSQ (Gong et al. 2019): in each unit cell [n, n+1] a tanh step
  centred at n + 0.5, scaled to reach n and n+1 at the cell edges (continuous in x).
  Larger k is sharper (k -> inf: round())."""
  n = jax.lax.stop_gradient(jnp.floor(x))
  d = x - n - 0.5
  return n + 0.5 * (1.0 + jnp.tanh(k * d) / np.tanh(0.5 * k))


def cubic_round(x):
  """round(x) + (x - round(x))^3: exact values, gradient 3 (x - round x)^2."""
  r = jax.lax.stop_gradient(jnp.round(x))
  return r + (x - r) ** 3


def round_fn(rounding: str = "fourier", fourier_terms: int = 10, dsq_k: float = 10.0):
  """The rounding function called `rounding` (see module docstring)."""
  if rounding == "fourier":
    return functools.partial(fourier_round, terms=int(fourier_terms))
  if rounding == "ste":
    return ste_round
  if rounding == "dsq":
    return functools.partial(dsq_round, k=float(dsq_k))
  if rounding == "cubic":
    return cubic_round
  if rounding == "round":
    return jnp.round
  raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")


# --------------------------------------------------------------------------- 8-bit steps

def _ste(x, f):
  """f(x) in the forward pass, identity gradient (the integer steps of `integer_samples`)."""
  return x + jax.lax.stop_gradient(f(x) - x)


def _floor(x):
  return _ste(x, jnp.floor)


def _to_sample(x):
  """The nearest 8-bit sample value, as libjpeg stores a decoded plane."""
  return _ste(x, lambda v: jnp.clip(jnp.round(v), 0.0, 255.0))


def _fix(v: float) -> float:
  """libjpeg's FIX(): a constant in 16-bit fixed point. Products of such constants with
  8-bit samples stay integers below 2^24, so float32 computes them exactly."""
  return float(int(v * 65536 + 0.5))


_HALF = 32768.0               # ONE_HALF at 16 fractional bits
_CENTRE = 128.0 * 65536.0     # CBCR_OFFSET


# --------------------------------------------------------------------------- colour

def rgb_to_ycbcr(rgb255, *, integer: bool = False):
  """JFIF full-range YCbCr of RGB in [0, 255] (..., 3); Cb, Cr centred at 128.

  integer=True: libjpeg's fixed-point rgb_ycc_convert (jccolor.c) of 8-bit RGB, which
  yields 8-bit samples (Cb/Cr round with 0.5 - 2^-16 so that they never reach 256).
  """
  r, g, b = rgb255[..., 0], rgb255[..., 1], rgb255[..., 2]
  if integer:
    y = _floor((_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _HALF) / 65536.0)
    cb = _floor((-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + _CENTRE + _HALF
                 - 1.0) / 65536.0)
    cr = _floor((_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + _CENTRE + _HALF
                 - 1.0) / 65536.0)
    return jnp.stack([y, cb, cr], axis=-1)
  y = 0.299 * r + 0.587 * g + 0.114 * b
  cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
  cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
  return jnp.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc, *, integer: bool = False):
  """Inverse of `rgb_to_ycbcr` (the JFIF decoder equations); not clipped.

  integer=True: libjpeg's fixed-point ycc_rgb_convert (jdcolor.c) of 8-bit samples.
  """
  y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
  if integer:
    r = y + _floor((_fix(1.402) * cr + _HALF) / 65536.0)
    g = y + _floor((-_fix(0.34414) * cb + _HALF - _fix(0.71414) * cr) / 65536.0)
    b = y + _floor((_fix(1.772) * cb + _HALF) / 65536.0)
    return jnp.stack([r, g, b], axis=-1)
  r = y + 1.402 * cr
  g = y - 0.344136286 * cb - 0.714136286 * cr
  b = y + 1.772 * cb
  return jnp.stack([r, g, b], axis=-1)


# --------------------------------------------------------------------------- resampling

def downsample(plane, factors, *, integer: bool = False):
  """Box average over (fv, fh) cells of a (N, H, W) plane; H, W divisible (libjpeg's encoder).

  integer=True: libjpeg's integer average (jcsample.c), whose rounding bias alternates
  along each row (0, 1 for 2x1 cells; 1, 2 for 2x2) so that no direction is favoured.
  """
  fv, fh = factors
  if fv == 1 and fh == 1:
    return plane
  n, h, w = plane.shape
  total = plane.reshape(n, h // fv, fv, w // fh, fh).sum(axis=(2, 4))
  if not integer:
    return total / (fv * fh)
  parity = (jnp.arange(w // fh) % 2).astype(plane.dtype)
  bias = parity + 1.0 if fv == 2 else parity
  return _floor((total + bias) / (fv * fh))


def _neighbours(x, axis):
  """(previous, next) samples along `axis`, edges replicated."""
  n = x.shape[axis]
  first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
  last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
  prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
  return prev, nxt


def _interleave(even, odd, axis):
  out = jnp.stack([even, odd], axis=axis + 1)
  shape = list(even.shape)
  shape[axis] *= 2
  return out.reshape(shape)


def _fancy_up_axis(x, axis):
  """x2 along `axis` with libjpeg's triangle filter: out[2i] = (3 x[i] + x[i-1]) / 4,
  out[2i+1] = (3 x[i] + x[i+1]) / 4, edges replicated."""
  prev, nxt = _neighbours(x, axis)
  return _interleave(0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt, axis)


def _fancy_up_integer(plane, fv):
  """libjpeg's integer triangle upsampling (jdsample.c) of a (N, h, w) plane, x2 across and
  x`fv` down. 2x1: each output rounds with bias 1 (even) / 2 (odd) over 4. 2x2: the
  vertical 3:1 sums stay unrounded and one rounding follows the horizontal pass, bias 8 / 7
  over 16."""
  if fv == 2:
    prev, nxt = _neighbours(plane, 1)
    plane = _interleave(3.0 * plane + prev, 3.0 * plane + nxt, 1)
    den, b_even, b_odd = 16.0, 8.0, 7.0
  else:
    den, b_even, b_odd = 4.0, 1.0, 2.0
  prev, nxt = _neighbours(plane, 2)
  return _interleave(_floor((3.0 * plane + prev + b_even) / den),
                     _floor((3.0 * plane + nxt + b_odd) / den), 2)


def upsample(plane, factors, *, integer: bool = False, fancy: bool = True):
  """Inverse of `downsample` as libjpeg's decoder does it (fancy upsampling, separable);
  fancy=False repeats each sample (DiffJPEG's upsampling)."""
  fv, fh = factors
  if fv == 1 and fh == 1:
    return plane
  if not fancy:
    return jnp.repeat(jnp.repeat(plane, fv, axis=1), fh, axis=2)
  if integer:
    if fh != 2:
      raise ValueError(f"integer upsampling is libjpeg's h2v1 / h2v2 only, got {factors}")
    return _fancy_up_integer(plane, fv)
  if fv == 2:
    plane = _fancy_up_axis(plane, 1)
  if fh == 2:
    plane = _fancy_up_axis(plane, 2)
  return plane


# --------------------------------------------------------------------------- DCT + quantisation

def _blocks(plane):
  n, h, w = plane.shape
  return plane.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)


def _unblocks(blocks):
  n, bh, bw = blocks.shape[:3]
  return blocks.transpose(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def dct2(blocks):
  d = jnp.asarray(DCT)
  return jnp.einsum("ij,...jk,lk->...il", d, blocks, d, precision=_HI)


def idct2(coefs):
  d = jnp.asarray(DCT)
  return jnp.einsum("ji,...jk,kl->...il", d, coefs, d, precision=_HI)


def quantize_plane(plane, table, rnd):
  """(N, H, W) plane (H, W multiples of 8, already level-shifted) -> its decoded version:
  8x8 DCT, divide by `table`, `rnd`, multiply back, inverse DCT."""
  c = dct2(_blocks(plane))
  t = jnp.asarray(table, plane.dtype)
  return _unblocks(idct2(rnd(c / t) * t))


def _pad_to(x, mult_h, mult_w):
  """Edge-replicate (N, H, W, ...) to multiples of (mult_h, mult_w), as libjpeg expands edges."""
  h, w = x.shape[1:3]
  ph, pw = (-h) % mult_h, (-w) % mult_w
  if ph == 0 and pw == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw)) + ((0, 0),) * (x.ndim - 3), mode="edge")


def compress_ycbcr(ycc, luma_table, chroma_table, *, subsampling="4:2:0", rnd=jnp.round,
                   level_shift=128.0, integer_samples=False, fancy_upsampling=True):
  """Lossy part of JPEG on YCbCr planes (N, H, W, 3) in [0, 255] units (any H, W).

  level_shift=0 compresses a signed signal (a residual, as a video codec does).
  fancy_upsampling=False: chroma samples repeated (libjpeg's do_fancy_upsampling off;
  DiffJPEG's only mode).
  integer_samples=True: 8-bit sample planes as libjpeg keeps them (integer chroma
  averaging and upsampling, decoded planes rounded and clamped to [0, 255]); the input
  planes must already be 8-bit samples (`rgb_to_ycbcr(..., integer=True)`).
  Returns (N, H, W, 3) decoded YCbCr (chroma upsampled again).
  """
  if subsampling not in SUBSAMPLINGS:
    raise ValueError(f"unknown subsampling {subsampling!r}; expected one of "
                     f"{tuple(SUBSAMPLINGS)}")
  if integer_samples and level_shift != 128.0:
    raise ValueError("integer_samples codes unsigned 8-bit samples: level_shift must be 128")
  fv, fh = SUBSAMPLINGS[subsampling]
  h, w = ycc.shape[1:3]
  # libjpeg's edge expansion (jcsample.c, jcprepct.c): across, the image's last column is
  # replicated to whole MCUs before downsampling; down, the image's last row only to whole
  # sample rows, and then each plane's own last row to whole 8-row blocks.
  x = _pad_to(ycc, fv, 8 * fh)

  def code(plane, table):
    dec = quantize_plane(_pad_to(plane, 8, 1) - level_shift, table, rnd) + level_shift
    return _to_sample(dec) if integer_samples else dec

  chans = [code(x[..., 0], luma_table)[:, :h, :w]]
  # The decoder interpolates between the chroma samples that cover the image only and
  # replicates the last of them (libjpeg's downsampled_width / _height), not the padding.
  ch, cw = -(-h // fv), -(-w // fh)
  for c in (1, 2):
    dec = code(downsample(x[..., c], (fv, fh), integer=integer_samples), chroma_table)
    up = upsample(dec[:, :ch, :cw], (fv, fh), integer=integer_samples,
                  fancy=fancy_upsampling)
    chans.append(up[:, :h, :w])
  return jnp.stack(chans, axis=-1)


def jpeg_simulate(rgb, quality=90, *, subsampling="4:2:0", rounding="fourier",
                  fourier_terms=10, dsq_k=10.0, tables=None, integer_samples=False,
                  variant="libjpeg"):
  """Simulated JPEG round trip of RGB in [0, 1], shape (..., H, W, 3); returns the same shape.

  quality: libjpeg quality 1..100 (may be a traced scalar; rounded to an integer).
  tables: explicit (luma, chroma) 8x8 tables instead of `quality` (the video codec's CRF
  tables). integer_samples: libjpeg's 8-bit arithmetic around the DCT (module docstring):
  the input is stored as 8-bit pixels and the output is 8-bit too (in [0, 1] units).
  variant="diffjpeg": the simulator the official InvISP code trains with (its DiffJPEG
  copy): `diffjpeg_tables` and repeated chroma samples, with this module's JFIF colour
  constants (DiffJPEG rounds them to 6 decimals: under 1e-3 of a level) and edge padding
  (DiffJPEG needs sizes in whole 16x16 MCUs, where the two agree).
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown JPEG variant {variant!r}; expected one of {VARIANTS}")
  diffjpeg = variant == "diffjpeg"
  if diffjpeg and integer_samples:
    raise ValueError("integer_samples is libjpeg's arithmetic, not DiffJPEG's")
  rgb = jnp.asarray(rgb, jnp.float32)
  if rgb.ndim < 3 or rgb.shape[-1] != 3:
    raise ValueError(f"jpeg_simulate expects (..., H, W, 3) RGB, got shape {rgb.shape}")
  lead = rgb.shape[:-3]
  x = rgb.reshape((-1,) + rgb.shape[-3:]) * 255.0
  if integer_samples:
    x = _to_sample(x)                # an encoder only takes 8-bit pixels
  if tables is not None:
    luma, chroma = tables
  else:
    luma, chroma = (diffjpeg_tables if diffjpeg else quant_tables)(quality)
  rnd = round_fn(rounding, fourier_terms, dsq_k)
  ycc = compress_ycbcr(rgb_to_ycbcr(x, integer=integer_samples), luma, chroma,
                       subsampling=subsampling, rnd=rnd, integer_samples=integer_samples,
                       fancy_upsampling=not diffjpeg)
  out = jnp.clip(ycbcr_to_rgb(ycc, integer=integer_samples), 0.0, 255.0) / 255.0
  return out.reshape(lead + out.shape[1:])


def from_config(jcfg):
  """A function rgb -> simulated JPEG of rgb from a `jpeg` config block."""
  return functools.partial(jpeg_simulate, quality=jcfg.quality, subsampling=jcfg.subsampling,
                           rounding=jcfg.rounding, fourier_terms=jcfg.fourier_terms,
                           dsq_k=jcfg.get("dsq_k", 10.0),
                           integer_samples=bool(jcfg.get("integer_samples", False)),
                           variant=str(jcfg.get("variant", "libjpeg")))
