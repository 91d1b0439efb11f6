"""CI / demo / ablation size of the regression net, sRGB -> RAW."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("regression_raw2rgb_tiny.py"))
  c.regression.direction = "rgb2raw"
  return c
