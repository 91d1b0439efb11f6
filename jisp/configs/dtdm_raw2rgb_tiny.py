"""CI / demo / ablation size of DiffRAW-DTDM: same code path, a micro U-Net on 32x32 patches.

T=2000 and s=100 as in the paper; test-time G is UPI's forward process by default (set
dtdm.estimator=regression + dtdm.estimator_workdir to use a trained regression_raw2rgb_tiny).
"""
from jisp.configs import dtdm_raw2rgb


def get_config(arg=None):
  c = dtdm_raw2rgb.get_config(arg)  # arguments as dtdm_raw2rgb.py (condition, color)
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
  c.model.attention_stages = (False, False, True)
  c.model.num_groups = 8
  c.dtdm.estimator = "upi"
  c.optim.peak_lr = 1e-3
  c.optim.end_lr = 1e-5
  c.optim.warmup_steps = 20
  c.optim.schedule = "warmup_cosine"
  c.optim.ema_decay = 0.99
  return c
