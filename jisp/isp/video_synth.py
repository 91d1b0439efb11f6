"""Frame sequences synthesised from one still (RAW, sRGB) pair by panning and zooming a crop.

There is no public RAW video set we can ship, so video tests, the demo and training on
image shards use camera motion simulated on real photos: a crop window of `size` x `size`
pixels moves along a straight line (constant velocity per axis, in pixels per frame) and
scales by a constant factor per frame (zoom in or out), centred on the image. The RAW and
the sRGB sequence are sampled with the SAME trajectory (bilinear, edges replicated), so
they stay pixel-aligned. Integer pans are exact crops; sub-pixel pans and zooms resample
both images, a small approximation for the sRGB (rendering does not commute exactly with
resampling), which we accept for synthetic motion.

Pure jnp (numpy input accepted), jit- and vmap-able; randomness from an explicit key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_trajectory(rng, num_frames: int, max_pan: float = 2.0, max_zoom: float = 0.02):
  """(offsets (T, 2) pixels (dy, dx) relative to the centre, scales (T,)) of a random
  constant-velocity pan (|v| <= max_pan px/frame per axis) and a constant zoom rate
  (scale_t = (1 + z)^(t - c), |z| <= max_zoom), both centred on the middle frame c."""
  k_v, k_z = jax.random.split(rng)
  v = jax.random.uniform(k_v, (2,), minval=-max_pan, maxval=max_pan)
  z = jax.random.uniform(k_z, (), minval=-max_zoom, maxval=max_zoom)
  t = jnp.arange(num_frames, dtype=jnp.float32) - (num_frames - 1) / 2.0
  return t[:, None] * v[None, :], (1.0 + z) ** t


def sample_crop(image, offset, scale, size: int):
  """(size, size, C) bilinear crop of image (H, W, C), centred at the image centre + offset,
  sampling step `scale` pixels (scale < 1 zooms in). Edges replicated."""
  image = jnp.asarray(image, jnp.float32)
  h, w = image.shape[:2]
  g = (jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0) * scale
  sy = jnp.clip((h - 1) / 2.0 + offset[0] + g, 0.0, h - 1.0)
  sx = jnp.clip((w - 1) / 2.0 + offset[1] + g, 0.0, w - 1.0)
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  wy, wx = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  g2 = lambda yi, xi: image[yi[:, None], xi[None, :]]
  return ((1 - wy) * ((1 - wx) * g2(y0, x0) + wx * g2(y0, x1))
          + wy * ((1 - wx) * g2(y1, x0) + wx * g2(y1, x1)))


def render_sequence(image, offsets, scales, size: int):
  """(T, size, size, C): one crop per (offset, scale) of the trajectory."""
  return jax.vmap(lambda o, s: sample_crop(image, o, s, size))(offsets, scales)


def synth_pair_sequence(rng, raw, rgb, num_frames: int, size: int, max_pan: float = 2.0,
                        max_zoom: float = 0.02):
  """(raw_frames, rgb_frames), each (T, size, size, 3), from one aligned still pair.

  Keep size + 2 * (max pan travel) + zoom margin <= the still's size, or the window
  reaches the replicated edge (still valid, just flat there).
  """
  offsets, scales = random_trajectory(rng, num_frames, max_pan, max_zoom)
  return (render_sequence(raw, offsets, scales, size),
          render_sequence(rgb, offsets, scales, size))


def synth_batch(rng, raw, rgb, num_frames: int, size: int, max_pan: float = 2.0,
                max_zoom: float = 0.02):
  """Batched `synth_pair_sequence`: (B, H, W, 3) stills -> (B, T, size, size, 3) each,
  an independent trajectory per example."""
  keys = jax.random.split(rng, raw.shape[0])
  return jax.vmap(lambda k, a, b: synth_pair_sequence(k, a, b, num_frames, size, max_pan,
                                                      max_zoom))(keys, raw, rgb)
