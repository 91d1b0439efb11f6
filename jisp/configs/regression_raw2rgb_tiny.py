"""CI / demo / ablation size of the regression net (RAW -> sRGB): 32x32 patches, base 16.

Argument: prior=none|input|residual|both (jisp.isp.prior; default none).
"""
from jisp.configs import regression_raw2rgb
from jisp.configs._tiny import fast_optim, micro_unet, run_size
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, prior="none")
  c = regression_raw2rgb.get_config()
  c.prior.mode = a.prior
  run_size(c, steps=300)
  micro_unet(c.model, attention=False)
  fast_optim(c.optim)
  return c
