"""UPI (Brooks et al. 2019): unprocessing with the camera's own metadata, no network.

Usable without training (`jisp eval --method upi`, `jisp reconstruct --method upi`,
`jisp compare --baseline upi`); `jisp train --config upi.py --config.data.dir=DIR` fits its
3x3 colour matrix, used for photos of unknown camera, to the training split.

Argument: tone=upi|render (config key upi.tone): how the render's tone is undone, Brooks
et al.'s smoothstep over gamma 2.2 (the paper's UPI, default) or the pair protocol's own
render curve (`jisp eval --method upi_render`; jisp.isp.tone.TONE_MODELS).
"""
import ml_collections

from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tone="upi")
  c = ml_collections.ConfigDict()
  c.task = "upi"
  c.seed = 0
  c.batch_size = 16
  c.num_steps = 300            # the colour-matrix fit: 9 parameters
  c.log_every = 50
  c.checkpoint_every = 300
  c.eval_every = 300
  c.eval_batches = 2
  c.keep_checkpoints = 1

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"
  c.data.dir = ""
  c.data.camera = ""
  c.data.protocol = "invisp"
  c.data.patch_size = 64

  c.upi = ml_collections.ConfigDict()
  c.upi.rgb_gain = 1.0         # Brooks et al.'s brightness gain; 1 = none (see jisp.tasks.upi)
  c.upi.tone = a.tone

  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.peak_lr = 1e-2
  c.optim.end_lr = 1e-4
  c.optim.warmup_steps = 10
  c.optim.schedule = "warmup_cosine"
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.optim.ema_decay = 0.0
  return c
