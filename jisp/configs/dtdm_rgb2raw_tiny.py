"""CI / demo / ablation size of sRGB -> RAW DTDM (see dtdm_raw2rgb_tiny.py for the sizes)."""
from jisp.configs import dtdm_raw2rgb_tiny


def get_config(arg=None):
  c = dtdm_raw2rgb_tiny.get_config(arg)  # arguments as dtdm_raw2rgb.py (condition, color, prediction)
  c.dtdm.direction = "rgb2raw"
  c.dtdm.estimator = "upi"
  return c
