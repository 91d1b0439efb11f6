"""Conditional DDPM, sRGB -> RAW, exactly as in the DDPM-for-inverse-ISP paper (FiveK).

U-Net base 64 x {1,2,3,4}, one BasicBlock per stage (GroupNorm + Swish + timestep
embedding), 2x down/up-sampling and full spatial self-attention after every stage but
the first, skip connections; epsilon prediction with the RGB concatenated to the noisy
RAW; linear beta 0.0015 -> 0.0195 over T=1000 (LDM's form); 64x64 patches; Adam with
linear warm-up to 2e-4 over 1k steps then cosine to 2e-6; global-norm clip 1; batch
256; 20k steps.  Camera switch: --config.data.camera=canon.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.task = "ddpm"
  c.seed = 0
  c.batch_size = 256          # global, across all processes and devices
  c.num_steps = 20_000
  c.log_every = 50
  c.checkpoint_every = 1_000
  c.eval_every = 1_000
  c.eval_batches = 4
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (parametric camera, no files) or "shards"
  c.data.dir = ""              # prepared shards (jisp prepare); sets source=shards when given
  c.data.camera = "nikon"      # FiveK subset: "nikon" (D700, 590 files) or "canon" (EOS 5D, 777)
  c.data.protocol = "invisp"
  c.data.patch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.base_channels = 64
  c.model.channel_mults = (1, 2, 3, 4)
  c.model.num_res_blocks = 1
  c.model.attention_stages = (False, True, True, True)
  c.model.num_groups = 32
  c.model.dropout = 0.0
  c.model.in_channels = 6      # noisy RAW (3) + RGB condition (3)
  c.model.out_channels = 3
  c.model.dtype = "float32"    # compute dtype; "bfloat16" on accelerators

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.kind = "linear_ldm"
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 0.0015
  c.diffusion.beta_end = 0.0195
  c.diffusion.prediction = "eps"  # the paper's; "v" (Salimans & Ho) is an option

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
  c.optim.ema_decay = 0.9999

  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "ddpm"
  c.sampling.steps = 1000
  return c
