"""A differentiable video-codec simulator (InvISP Sec. 4.3.2), for H.264/H.265-like loss.

Frames are coded in order. Frame 0 is an intra (I) frame; every later frame is intra with
probability `intra_prob` ("randomized alternation between inter-frame and intra-frame
simulation"), else inter (P):

  intra  the frame goes through the JPEG path (jisp.isp.jpeg) with CRF-dependent tables.
  inter  motion-compensated prediction from the previous *decoded* frame, where the motion
         is not estimated but simulated: every 16x16 macroblock gets a random dominant
         motion of magnitude U[0, M] per axis (random sign) plus a per-pixel jitter of
         U[0, jitter] (paper: [0, 0.1]); the reference is warped by it (bilinear,
         edges replicated). The residual frame - prediction is DCT-quantised with the same
         tables (no level shift: it is a signed signal) and added back.

CRF -> tables. We read CRF as the average H.264 QP. H.264's quantiser step is
Qstep = 2^((QP - 4) / 6), i.e. it doubles every 6 QP, and at QP 28 it is 16, the DC entry
of the standard JPEG luminance table at quality 50 (Annex K). So the tables at CRF c are
the Annex-K tables times 2^((c - 28) / 6), floored at 1 (not rounded or clamped at 255:
they only need to be step sizes, and large CRFs exceed 8-bit JPEG tables). This makes
CRF 23 / 35 / 41 (the paper's settings) about 0.56x / 2.2x / 4.5x the quality-50 steps.

All jnp; `rng` is an explicit key; shapes (..., T, H, W, 3) in [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.isp import jpeg

MACROBLOCK = 16
REFERENCE_CRF = 28.0   # Qstep(QP 28) = 16 = Annex-K luma DC step


def crf_scale(crf):
  """Quantiser-step multiplier of CRF `crf` relative to the Annex-K (quality 50) tables."""
  return 2.0 ** ((jnp.asarray(crf, jnp.float32) - REFERENCE_CRF) / 6.0)


def crf_tables(crf):
  """(luma, chroma) 8x8 step tables for CRF `crf` (may be traced)."""
  s = crf_scale(crf)
  return (jnp.maximum(jnp.asarray(jpeg.LUMA_TABLE) * s, 1.0),
          jnp.maximum(jnp.asarray(jpeg.CHROMA_TABLE) * s, 1.0))


def macroblock_flow(rng, n, h, w, max_motion, jitter, macroblock=MACROBLOCK):
  """(n, h, w, 2) displacement (dy, dx): per-macroblock dominant motion + per-pixel jitter."""
  k_mag, k_sign, k_jit = jax.random.split(rng, 3)
  bh, bw = -(-h // macroblock), -(-w // macroblock)
  mag = jax.random.uniform(k_mag, (n, bh, bw, 2), minval=0.0, maxval=max_motion)
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n, bh, bw, 2)), 1.0, -1.0)
  dom = jnp.repeat(jnp.repeat(mag * sign, macroblock, axis=1), macroblock, axis=2)[:, :h, :w]
  return dom + jax.random.uniform(k_jit, (n, h, w, 2), minval=0.0, maxval=jitter)


def warp(img, flow):
  """Bilinear backward warp: out[y, x] = img[y + dy, x + dx], edges replicated.
  img (n, h, w, c), flow (n, h, w, 2)."""
  n, h, w, c = img.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  sy = jnp.clip(yy[None] + flow[..., 0], 0.0, h - 1.0)
  sx = jnp.clip(xx[None] + flow[..., 1], 0.0, w - 1.0)
  y0 = jnp.floor(sy)
  x0 = jnp.floor(sx)
  wy = (sy - y0)[..., None]
  wx = (sx - x0)[..., None]
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)
  bidx = jnp.arange(n)[:, None, None]
  g = lambda yi, xi: img[bidx, yi, xi]
  return ((1 - wy) * ((1 - wx) * g(y0, x0) + wx * g(y0, x1))
          + wy * ((1 - wx) * g(y1, x0) + wx * g(y1, x1)))


def simulate(frames, rng, *, crf=23.0, max_motion=1.0, jitter=0.1, intra_prob=0.5,
             subsampling="4:2:0", rounding="fourier", fourier_terms=10, dsq_k=10.0,
             macroblock=MACROBLOCK):
  """Decoded frames (..., T, H, W, 3) of a simulated coding of `frames` (same shape).

  Returns (decoded, is_intra (..., T) bool). Frame 0 of every sequence is intra.
  """
  frames = jnp.asarray(frames, jnp.float32)
  if frames.ndim < 4 or frames.shape[-1] != 3:
    raise ValueError(f"codec.simulate expects (..., T, H, W, 3) frames, got {frames.shape}")
  lead, (t, h, w) = frames.shape[:-4], frames.shape[-4:-1]
  x = frames.reshape((-1, t, h, w, 3))
  n = x.shape[0]
  luma, chroma = crf_tables(crf)
  rnd = jpeg.round_fn(rounding, fourier_terms, dsq_k)
  k_type, k_motion = jax.random.split(rng)
  is_intra = jax.random.bernoulli(k_type, intra_prob, (n, t)).at[:, 0].set(True)
  motion_keys = jax.random.split(k_motion, t)

  def code(prev, inp):
    cur, intra, key = inp                                   # (n, h, w, 3), (n,), key
    cur_y = jpeg.rgb_to_ycbcr(cur * 255.0)
    intra_y = jpeg.compress_ycbcr(cur_y, luma, chroma, subsampling=subsampling, rnd=rnd)
    pred = warp(prev, macroblock_flow(key, n, h, w, max_motion, jitter, macroblock))
    pred_y = jpeg.rgb_to_ycbcr(pred * 255.0)
    res = jpeg.compress_ycbcr(cur_y - pred_y, luma, chroma, subsampling=subsampling, rnd=rnd,
                              level_shift=0.0)
    out_y = jnp.where(intra[:, None, None, None], intra_y, pred_y + res)
    out = jnp.clip(jpeg.ycbcr_to_rgb(out_y), 0.0, 255.0) / 255.0
    return out, out

  seq = jnp.moveaxis(x, 1, 0)                               # (t, n, h, w, 3)
  _, dec = jax.lax.scan(code, seq[0], (seq, jnp.moveaxis(is_intra, 1, 0), motion_keys))
  dec = jnp.moveaxis(dec, 0, 1)
  return dec.reshape(lead + (t, h, w, 3)), is_intra.reshape(lead + (t,))


def from_config(ccfg, jcfg, rounding=None):
  """A function (frames, rng) -> (decoded, is_intra) from `codec` and `jpeg` config blocks."""
  def fn(frames, rng):
    return simulate(frames, rng, crf=ccfg.crf, max_motion=ccfg.max_motion,
                    jitter=ccfg.jitter, intra_prob=ccfg.intra_prob,
                    subsampling=jcfg.subsampling, rounding=rounding or jcfg.rounding,
                    fourier_terms=jcfg.fourier_terms, dsq_k=jcfg.get("dsq_k", 10.0),
                    macroblock=ccfg.get("macroblock", MACROBLOCK))
  return fn
