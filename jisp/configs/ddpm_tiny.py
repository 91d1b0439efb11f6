"""CI / demo size of the conditional DDPM: same code path, seconds per step on a 2-core CPU.

Argument: prior=none|input|residual|both (jisp.isp.prior; default none).
"""
from jisp.configs import ddpm_fivek
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, prior="none")
  c = ddpm_fivek.get_config(f"prior={a.prior}")
  c.batch_size = 16
  c.num_steps = 200
  c.log_every = 10
  c.checkpoint_every = 50
  c.eval_every = 100
  c.eval_batches = 2
  c.data.patch_size = 32
  c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
  c.model.base_channels = 16
  c.model.channel_mults = (1, 2, 2)
  c.model.attention_stages = (False, False, True)
  c.model.num_groups = 8
  c.optim.peak_lr = 1e-3
  c.optim.end_lr = 1e-5
  c.optim.warmup_steps = 20
  c.optim.ema_decay = 0.99
  # v-prediction: at demo training lengths eps-prediction samples collapse (x0 implied at
  # t~T is off by 1/sqrt(abar_T) ~ 80x its eps error); see README "eps vs v".
  c.diffusion.prediction = "v"
  c.sampling.sampler = "ddim"
  c.sampling.steps = 50
  c.sampling.variance = "beta_tilde"  # what README's DDPM-1000 figures for this size used
  return c
