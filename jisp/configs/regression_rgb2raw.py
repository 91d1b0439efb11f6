"""Regression U-Net, sRGB -> RAW (invisp protocol, 64x64 patches as the DDPM paper)."""
from jisp.configs import regression_raw2rgb


def get_config():
  c = regression_raw2rgb.get_config()
  c.regression.direction = "rgb2raw"
  c.data.patch_size = 64
  return c
