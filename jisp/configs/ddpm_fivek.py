"""Conditional DDPM, sRGB -> RAW, exactly as in the DDPM-for-inverse-ISP paper (FiveK).

U-Net base 64 x {1,2,3,4}, one BasicBlock per stage (GroupNorm + Swish + timestep
embedding), 2x down/up-sampling and full spatial self-attention after every stage but
the first, skip connections; epsilon prediction with the RGB concatenated to the noisy
RAW; linear beta 0.0015 -> 0.0195 over T=1000 (LDM's form); 64x64 patches; Adam with
linear warm-up to 2e-4 over 1k steps then cosine to 2e-6; global-norm clip 1; batch
256; 20k steps.

Arguments (`--config ddpm_fivek.py:ARG`, comma-separated) give the paper's Table 2
ablations and the other switches without one file each:
  camera=nikon|canon   FiveK subset (Nikon D700 or Canon EOS 5D)
  nres=2               two residual blocks per U-Net stage
  base=32              U-Net base channels 32 instead of 64
  schedule=ddpm        the original DDPM beta schedule (1e-4 -> 0.02, linear)
  schedule=beta_linear the other reading of the paper's "beta increases linearly from 0.0015
                       to 0.0195": linear in beta (the default, LDM's code, is linear in
                       sqrt(beta); the two differ a lot: abar_500 = 0.049 vs 0.116)
  patch=128            128x128 patches; batch 64 keeps the pixels per step of 256 x 64x64
                       (the paper shrank the batch for memory without saying to what)
  prior=none|input|residual|both
                       jisp.isp.prior: UPI with the target camera's metadata as an extra
                       condition (input: model.in_channels 9) and/or the base the sampled
                       RAW is a residual over; none (the paper) by default
  prediction=v         v-prediction (Salimans & Ho) instead of epsilon: not in the paper;
                       jisp's finding is that eps needs far longer training before sampling
                       from pure noise works on this task (README, "eps vs v")
  prediction=x0        the network predicts x0 itself (with a residual prior: a zero
                       network returns UPI)
"""
import ml_collections

from jisp.configs._camera import add_camera_options
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, camera="nikon", nres=1, base=64, schedule="linear_ldm", patch=64,
                prediction="eps", prior="none")
  c = ml_collections.ConfigDict()
  c.task = "ddpm"
  c.seed = 0
  c.batch_size = 256 if a.patch == 64 else max(1, 256 * 64 * 64 // (a.patch * a.patch))  # global
  c.num_steps = 20_000
  c.log_every = 50
  c.checkpoint_every = 1_000
  c.eval_every = 1_000
  c.eval_batches = 4
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (parametric camera, no files) or "shards"
  c.data.dir = ""              # prepared shards (jisp prepare); sets source=shards when given
  c.data.camera = a.camera     # FiveK subset: "nikon" (D700, 590 files) or "canon" (EOS 5D, 777)
  c.data.protocol = "invisp"
  c.data.patch_size = a.patch

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.base_channels = a.base
  c.model.channel_mults = (1, 2, 3, 4)
  c.model.num_res_blocks = a.nres
  c.model.attention_stages = (False, True, True, True)
  c.model.num_groups = 32
  c.model.dropout = 0.0
  # noisy RAW (3) + RGB condition (3) (+ the UPI prior (3) when it is an input)
  c.model.in_channels = 9 if a.prior in ("input", "both") else 6
  c.model.out_channels = 3
  c.model.dtype = "float32"    # compute dtype; "bfloat16" on accelerators
  c.model.zero_out = False     # output conv at zero (a residual prior starts as the prior)
  c.model.conv_kernel_grad = "auto"   # matmuls under YNNPACK convolutions on CPU (models/conv.py)
  c.model.attention_grad = "recompute"  # backward recomputes the softmax (models/attention.py)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  if a.schedule == "linear_ldm":   # the paper's: linear in sqrt(beta), as LDM
    c.diffusion.kind, c.diffusion.beta_start, c.diffusion.beta_end = "linear_ldm", 0.0015, 0.0195
  elif a.schedule == "beta_linear":
    c.diffusion.kind, c.diffusion.beta_start, c.diffusion.beta_end = "linear", 0.0015, 0.0195
  elif a.schedule == "ddpm":       # Table 2's "DDPM schedule": Ho et al.'s 1e-4 -> 0.02
    c.diffusion.kind, c.diffusion.beta_start, c.diffusion.beta_end = "ddpm", 1e-4, 0.02
  else:
    raise ValueError(f"schedule must be linear_ldm, beta_linear or ddpm, got {a.schedule!r}")
  c.diffusion.prediction = a.prediction  # the paper's "eps"; "v" (Salimans & Ho) is an option

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.peak_lr = 2e-4
  c.optim.end_lr = 2e-6
  c.optim.warmup_steps = 1_000
  c.optim.schedule = "warmup_cosine"
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  # EMA is jisp's (neither paper uses it); its warm-up min(decay, (1+n)/(10+n)) keeps the
  # effective decay at ~0.9995 by the end of a 20k-step run, not 0.9999. `jisp eval
  # --params raw` scores the raw parameters instead.
  c.optim.ema_decay = 0.9999

  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 1000
  # Solver settings (jisp.tasks.ddpm.SOLVER_SETTINGS; each a CLI flag too). The paper's
  # DDPM uses sigma^2 = beta; the other defaults are jisp's (README "Fidelity").
  c.sampling.variance = "beta"
  c.sampling.clip_x0 = True
  c.sampling.spacing = "trailing"
  c.sampling.order = 3
  c.sampling.skip = "logSNR"
  c.sampling.denoise_to_zero = True
  return add_camera_options(c, a.prior)
