"""CI / demo / ablation size of sRGB -> RAW DTDM (see dtdm_raw2rgb_tiny.py for the sizes)."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("dtdm_raw2rgb_tiny.py"))
  c.dtdm.direction = "rgb2raw"
  c.dtdm.estimator = "upi"
  return c
