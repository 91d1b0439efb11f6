"""CI / demo / ablation size of DiffRAW-DTDM: same code path, a micro U-Net on 32x32 patches.

T=2000 and s=100 as in the paper; test-time G is UPI's forward process by default (set
dtdm.estimator=regression + dtdm.estimator_workdir to use a trained regression_raw2rgb_tiny).
"""
from jisp.configs import dtdm_raw2rgb
from jisp.configs._tiny import fast_optim, micro_unet, run_size


def get_config(arg=None):
  c = dtdm_raw2rgb.get_config(arg)  # arguments as dtdm_raw2rgb.py (condition, color, prediction)
  run_size(c, steps=300)
  micro_unet(c.model)
  fast_optim(c.optim)
  c.dtdm.estimator = "upi"
  c.optim.schedule = "warmup_cosine"
  return c
