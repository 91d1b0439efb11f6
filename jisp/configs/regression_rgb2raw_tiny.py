"""CI / demo / ablation size of the regression net, sRGB -> RAW."""
from jisp.configs import regression_raw2rgb_tiny


def get_config():
  c = regression_raw2rgb_tiny.get_config()
  c.regression.direction = "rgb2raw"
  return c
