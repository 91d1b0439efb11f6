"""CI / demo size of the conditional DDPM: same code path, seconds per step on a 2-core CPU.

Arguments: prior=none|input|residual|both (jisp.isp.prior; default none);
prediction=v|eps|x0 (default v). With a residual prior, x0 makes a network that outputs
zero return UPI exactly, and a short run regresses towards E[RAW | sRGB, camera] instead
of sampling noise it has not learned to remove.
"""
from jisp.configs import ddpm_fivek
from jisp.configs._tiny import fast_optim, micro_unet, run_size
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, prior="none", prediction="v")
  c = ddpm_fivek.get_config(f"prior={a.prior}")
  run_size(c, steps=200, checkpoint_every=50)
  micro_unet(c.model)
  fast_optim(c.optim)
  # v-prediction: at demo training lengths eps-prediction samples collapse (x0 implied at
  # t~T is off by 1/sqrt(abar_T) ~ 80x its eps error); see README "eps vs v".
  c.diffusion.prediction = a.prediction
  c.sampling.sampler = "ddim"
  c.sampling.steps = 50
  c.sampling.variance = "beta_tilde"  # what README's DDPM-1000 figures for this size used
  return c
