"""Regression U-Net, sRGB -> RAW (invisp protocol, 64x64 patches as the DDPM paper)."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("regression_raw2rgb.py"))
  c.regression.direction = "rgb2raw"
  c.data.patch_size = 64
  return c
