"""CI / demo / ablation size of the regression net, sRGB -> RAW.

Argument: prior=none|input|residual|both (jisp.isp.prior; default none).
"""
from jisp.configs import regression_raw2rgb_tiny


def get_config(arg=None):
  c = regression_raw2rgb_tiny.get_config(arg)
  c.regression.direction = "rgb2raw"
  return c
