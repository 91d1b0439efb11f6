"""CI / demo / ablation size of the regression net (RAW -> sRGB): 32x32 patches, base 16.

Argument: prior=none|input|residual|both (jisp.isp.prior; default none).
"""
from jisp.configs import regression_raw2rgb
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, prior="none")
  c = regression_raw2rgb.get_config()
  c.prior.mode = a.prior
  c.batch_size = 16
  c.num_steps = 300
  c.log_every = 10
  c.checkpoint_every = 100
  c.eval_every = 100
  c.eval_batches = 2
  c.data.patch_size = 32
  c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
  c.model.base_channels = 16
  c.model.channel_mults = (1, 2, 2)
  c.optim.peak_lr = 1e-3
  c.optim.end_lr = 1e-5
  c.optim.warmup_steps = 20
  c.optim.ema_decay = 0.99
  return c
