"""InvISP on videos (paper Sec. 4.2): a sliding window of W frames through one flow.

The W consecutive frames of a window are stacked on channels, (B, W, H, W, 3) ->
(B, H, W, 3W), and one `InvISPFlow` with 3W channels maps the RAW window to the sRGB
window (forward) and back (inverse), so every output frame can draw on its neighbours.
Only the centre frame of a window is an output that counts:

  training   forward on the W ground-truth RAW frames; the loss on the centre sRGB frame.
             The inverse gets the ground-truth sRGB frames with the centre one replaced by
             the (compressed) rendering; the loss on the centre RAW frame (the paper's
             "replace the not-centered frames with the ground-truth frames").
  inference  `render` / `reconstruct`: one window per frame, the sequence's end frames
             replicated to fill windows at the ends, the window's centre output kept; the
             inverse sees the decoded video's own frames (the paper: "use the reconstructed
             frames to act as the ground-truth frames").

The coupling split is W of the 3W channels (the image flow's 1 of 3), and the invertible
1x1 conv mixes all 3W channels, so information moves between frames.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jisp.models import flow as flow_lib


def stack_frames(frames):
  """(B, W, H, W', 3) -> (B, H, W', 3W), frame-major channels."""
  b, n, h, w, c = frames.shape
  return jnp.moveaxis(frames, 1, 3).reshape(b, h, w, n * c)


def unstack_frames(x, window: int):
  """Inverse of `stack_frames`."""
  b, h, w, nc = x.shape
  return jnp.moveaxis(x.reshape(b, h, w, window, nc // window), 3, 1)


def window_indices(num_frames: int, window: int):
  """(T, W) int: the frame indices of the window centred on each frame, ends replicated."""
  c = window // 2
  t = jnp.arange(num_frames)[:, None] + jnp.arange(window)[None, :] - c
  return jnp.clip(t, 0, num_frames - 1)


@dataclasses.dataclass(frozen=True)
class VideoFlow:
  flow: flow_lib.InvISPFlow
  window: int

  def __post_init__(self):
    if self.window < 1 or self.window % 2 == 0:
      raise ValueError(f"video window must be odd and >= 1, got {self.window}")
    if self.flow.channels != 3 * self.window:
      raise ValueError(f"flow has {self.flow.channels} channels, a window of {self.window} "
                       f"frames needs {3 * self.window}")

  @property
  def centre(self) -> int:
    return self.window // 2

  def init(self, rng):
    return self.flow.init(rng)

  def forward_window(self, params, raw_frames):
    """(B, W, H, W', 3) RAW frames -> (B, W, H, W', 3) sRGB-side frames (unclipped)."""
    return unstack_frames(self.flow.forward(params, stack_frames(raw_frames)), self.window)

  def inverse_window(self, params, rgb_frames):
    return unstack_frames(self.flow.inverse(params, stack_frames(rgb_frames)), self.window)

  def _slide(self, fn, video):
    video = jnp.asarray(video, jnp.float32)
    windows = video[window_indices(video.shape[0], self.window)]   # (T, W, H, W', 3)
    return fn(windows)[:, self.centre]

  def render(self, params, raw_video):
    """(T, H, W', 3) RAW video -> (T, H, W', 3) sRGB video in [0, 1]."""
    return jnp.clip(self._slide(lambda w: self.forward_window(params, w), raw_video), 0.0, 1.0)

  def reconstruct(self, params, rgb_video):
    """(T, H, W', 3) decoded sRGB video -> (T, H, W', 3) RAW video in [0, 1]."""
    return jnp.clip(self._slide(lambda w: self.inverse_window(params, w), rgb_video), 0.0, 1.0)


def from_config(mcfg, window: int) -> VideoFlow:
  return VideoFlow(flow_lib.from_config(mcfg, channels=3 * int(window)), int(window))
