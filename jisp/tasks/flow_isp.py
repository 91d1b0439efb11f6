"""InvISP as a task: one invertible flow for RAW -> sRGB (forward) and sRGB -> RAW (inverse).

Bidirectional L1 (paper Eq. 8, the official train.py):

  rgb_hat = clip(f(raw), 0, 1)
  loss    = |rgb_hat - rgb|_1 + lambda |f^-1(S(rgb_hat)) - raw|_1

S is the compression simulator between the two passes (`loss.simulator`): "jpeg" (the
differentiable JPEG of jisp.isp.jpeg, InvISP's default), "codec" (the video codec
simulator, video configs) or "none" (the paper's "w/o JPEG simulation" row). Both terms
are means over every pixel of the global batch. lambda = `loss.raw_weight` (paper: 1).

Video (`video.window` W > 1, odd): each still patch of the batch becomes a W-frame clip by
a random pan/zoom (jisp.isp.video_synth) and the sliding-window flow of
jisp.models.flow_video is trained on the centre frame, ground-truth frames standing in for
the other frames of the inverse's input window.

Evaluation (`eval_metrics`) stores what a camera would: the forward rendering quantised to
8 bits, compressed with HARD rounding (the real codec's arithmetic at `jpeg.quality`, or
the codec simulator at `codec.crf`), re-quantised to 8 bits, and inverted:
  raw_psnr       RAW PSNR of that reconstruction (dB, per image, averaged)
  raw_psnr_8bit  the same without compression (8-bit quantisation and clipping only)
  rgb_psnr       PSNR of the forward rendering against the ground-truth sRGB
The full test protocol with real JPEG files lives in jisp.infer.roundtrip.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jisp.core import metrics
from jisp.core.errors import ConfigError
from jisp.isp import codec as codec_lib
from jisp.isp import jpeg as jpeg_lib
from jisp.isp import video_synth
from jisp.models import flow as flow_lib
from jisp.models import flow_video
from jisp.tasks.base import IOSpec, Task

SIMULATORS = ("none", "jpeg", "codec")


def quantize8(x):
  """What an 8-bit image file holds: round(clip(x) * 255) / 255."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0


def _config_error(key, value, why):
  return ConfigError(f"bad value for config key '{key}': {value!r} ({why})")


class FlowISPTask(Task):
  name = "flow_isp"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    self.patch = int(config.data.patch_size)
    self.raw_weight = float(config.loss.raw_weight)
    self.simulator = str(config.loss.simulator)
    if self.simulator not in SIMULATORS:
      raise _config_error("loss.simulator", self.simulator, f"expected one of {SIMULATORS}")
    if str(config.model.get("dtype", "float32")) != "float32":
      # The exact inverse needs the forward's arithmetic to fp32 precision; bf16 compute
      # would break invertibility, so the flow ISP does not offer it.
      raise _config_error("model.dtype", config.model.dtype,
                          "the flow ISP computes in float32: its exact inverse needs it")
    if not 3 <= int(config.model.num_blocks) <= 64:
      raise _config_error("model.num_blocks", config.model.num_blocks, "expected 3..64")
    j = config.jpeg
    if j.rounding not in jpeg_lib.ROUNDINGS:
      raise _config_error("jpeg.rounding", j.rounding, f"expected one of {jpeg_lib.ROUNDINGS}")
    if j.subsampling not in jpeg_lib.SUBSAMPLINGS:
      raise _config_error("jpeg.subsampling", j.subsampling,
                          f"expected one of {tuple(jpeg_lib.SUBSAMPLINGS)}")
    if not 1 <= int(j.quality) <= 100:
      raise _config_error("jpeg.quality", j.quality, "expected 1..100")
    if j.get("variant", "libjpeg") not in jpeg_lib.VARIANTS:
      raise _config_error("jpeg.variant", j.variant, f"expected one of {jpeg_lib.VARIANTS}")
    if j.get("variant") == "diffjpeg" and j.get("integer_samples", False):
      raise _config_error("jpeg.integer_samples", True, "libjpeg's arithmetic, not DiffJPEG's")

    v = config.get("video")
    self.window = int(v.window) if v is not None else 1
    self.is_video = self.window > 1
    if self.simulator == "codec" and not self.is_video:
      raise _config_error("loss.simulator", "codec", "the codec simulator needs video.window > 1")
    if self.is_video:
      if self.window % 2 == 0:
        raise _config_error("video.window", self.window, "must be odd")
      self.vflow = flow_video.from_config(config.model, self.window)
      self.flow = self.vflow.flow
      self.frame = int(v.frame_size) or self.patch
      if self.frame > self.patch or self.frame % 8:
        raise _config_error("video.frame_size", v.frame_size,
                            f"must be a multiple of 8 and <= data.patch_size {self.patch}")
      self.max_pan, self.max_zoom = float(v.max_pan), float(v.max_zoom)
    else:
      self.vflow = None
      self.flow = flow_lib.from_config(config.model)

    self.jpeg_train = jpeg_lib.from_config(j)
    self.jpeg_eval = functools.partial(jpeg_lib.jpeg_simulate, quality=int(j.quality),
                                       subsampling=j.subsampling, rounding="round")
    if self.simulator == "codec":
      self.codec_train = codec_lib.from_config(config.codec, j)
      self.codec_eval = codec_lib.from_config(config.codec, j, rounding="round")

  # ---------------------------------------------------------------- protocol

  @property
  def io(self):
    return IOSpec(source="rgb", target="raw", in_channels=3, out_channels=3,
                  patch=self.patch, direction="both", conditions=("rgb",),
                  window=self.window)

  def batch_spec(self, batch_size):
    p = self.patch
    s = jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32)
    return {"rgb": s, "raw": s}

  def init_params(self, rng):
    return self.flow.init(rng)

  # ---------------------------------------------------------------- the two passes

  def forward(self, params, raw, clip: bool = True):
    """RAW (B, H, W, 3) [video: (B, W, H, W', 3)] -> sRGB rendering, clipped to [0, 1]."""
    out = (self.vflow.forward_window(params, raw) if self.is_video
           else self.flow.forward(params, raw))
    return jnp.clip(out, 0.0, 1.0) if clip else out

  def inverse(self, params, rgb, clip: bool = True):
    """sRGB (B, H, W, 3) [video: (B, W, H, W', 3)] -> RAW, clipped to [0, 1] (the test
    protocol clips too; clip=False gives the exact inverse of forward(clip=False))."""
    out = (self.vflow.inverse_window(params, rgb) if self.is_video
           else self.flow.inverse(params, rgb))
    return jnp.clip(out, 0.0, 1.0) if clip else out

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """RAW patches (B, P, P, 3) in [0, 1] for sRGB patches: the inverse pass (deterministic).
    A video flow treats each still as a clip of W identical frames."""
    del rng, options, noise
    x = jnp.asarray(inputs, jnp.float32)
    if not self.is_video:
      return self.inverse(params, x)
    clip = jnp.repeat(x[:, None], self.window, axis=1)
    return self.inverse(params, clip)[:, self.vflow.centre]

  def render(self, params, raw):
    """The forward pass on still images (B, H, W, 3): RAW -> sRGB in [0, 1]; a video flow
    renders each still as a clip of W identical frames."""
    x = jnp.asarray(raw, jnp.float32)
    if not self.is_video:
      return self.forward(params, x)
    clip = jnp.repeat(x[:, None], self.window, axis=1)
    return self.forward(params, clip)[:, self.vflow.centre]

  def render_video(self, params, raw_frames):
    """(T, H, W, 3) RAW frames -> sRGB frames in [0, 1], sliding windows (video flow)."""
    return self.vflow.render(params, raw_frames)

  def predict_video(self, params, rgb_frames):
    """(T, H, W, 3) decoded sRGB frames -> RAW frames in [0, 1], sliding windows."""
    return self.vflow.reconstruct(params, rgb_frames)

  def video_clip(self, rng, raw, rgb, frames: int):
    """A test clip from one still pair: `frames` frames of the training's random pan/zoom
    (the size video.frame_size, or the patch), as the video task is trained on."""
    size = min(self.frame, raw.shape[0], raw.shape[1])
    return video_synth.synth_pair_sequence(rng, raw, rgb, frames, size, self.max_pan,
                                           self.max_zoom)

  def network(self, params):
    # One network evaluation = one inverse pass on one patch (what predict runs).
    x = jax.ShapeDtypeStruct((1, self.patch, self.patch, 3), jnp.float32)
    return (lambda prm, xx: self.predict(prm, xx, None, None)), (params, x)

  # ---------------------------------------------------------------- loss

  def _compress(self, rgb_window, rng, train: bool):
    """The simulator S on images (B, H, W, 3) or windows (B, W, H, W', 3)."""
    if self.simulator == "none":
      return rgb_window
    if self.simulator == "jpeg":
      return (self.jpeg_train if train else self.jpeg_eval)(rgb_window)
    sim = self.codec_train if train else self.codec_eval
    return sim(rgb_window, rng)[0]

  def _clips(self, batch, rng):
    raw_f, rgb_f = video_synth.synth_batch(rng, batch["raw"], batch["rgb"], self.window,
                                           self.frame, self.max_pan, self.max_zoom)
    return raw_f, rgb_f

  def loss(self, params, batch, rng, train=True):
    sim_rng, clip_rng = jax.random.split(rng)
    if not self.is_video:
      raw, rgb = batch["raw"], batch["rgb"]
      rgb_hat = self.forward(params, raw)
      raw_hat = self.inverse(params, self._compress(rgb_hat, sim_rng, train), clip=False)
    else:
      c = self.vflow.centre
      raw_f, rgb_f = self._clips(batch, clip_rng)
      rgb_hat = self.forward(params, raw_f)[:, c]
      window = rgb_f.at[:, c].set(rgb_hat)
      raw_hat = self.inverse(params, self._compress(window, sim_rng, train), clip=False)[:, c]
      raw, rgb = raw_f[:, c], rgb_f[:, c]
    rgb_l1 = jnp.mean(jnp.abs(rgb_hat - rgb))
    raw_l1 = jnp.mean(jnp.abs(raw_hat - raw))
    return rgb_l1 + self.raw_weight * raw_l1, {"rgb_l1": rgb_l1, "raw_l1": raw_l1}

  # ---------------------------------------------------------------- evaluation

  def eval_metrics(self, params, batch, rng):
    sim_rng, clip_rng = jax.random.split(rng)
    loss, aux = self.loss(params, batch, rng, train=False)
    if not self.is_video:
      raw, rgb = batch["raw"], batch["rgb"]
      stored = quantize8(self.forward(params, raw))
      window, centre = stored, None
    else:
      c = self.vflow.centre
      raw_f, rgb_f = self._clips(batch, clip_rng)
      stored = quantize8(self.forward(params, raw_f)[:, c])
      window, centre = quantize8(rgb_f).at[:, c].set(stored), c
      raw, rgb = raw_f[:, c], rgb_f[:, c]
    comp = quantize8(self._compress(window, sim_rng, train=False)
                     if self.simulator != "none" else self.jpeg_eval(window))
    pick = (lambda x: x) if centre is None else (lambda x: x[:, centre])
    raw_jpeg = pick(self.inverse(params, comp))
    raw_8bit = pick(self.inverse(params, window))
    return {
        "loss": loss, "rgb_l1": aux["rgb_l1"], "raw_l1": aux["raw_l1"],
        "rgb_psnr": metrics.batch_psnr(stored, rgb),
        "raw_psnr": metrics.batch_psnr(raw_jpeg, raw),
        "raw_psnr_8bit": metrics.batch_psnr(raw_8bit, raw),
    }
