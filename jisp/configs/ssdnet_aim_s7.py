"""SSDNet with soft supervision, sRGB -> packed RGGB RAW, AIM 2022 Reversed ISP track 1
(Samsung S7), the paper's training schedule (../shared/papers/ssdnet_spec.md section 4).

dim 48, blocks [4,6,6,8] / [6,6,4] + 4 refinement, heads [1,2,4,8], CFM with both gates,
7x7 conv branch, bias-free LayerNorm, GDFN 2.66; packed RGGB output at half resolution;
training-resampling, alpha 1e-3, clipped L1 floor 1/1024. AdamW 3e-4 (0.9, 0.999),
weight decay 1e-4 on every parameter, global-norm clip 0.01, lr constant for 92k steps then
cosine to 1e-6 over the next 184k (276k in all), no EMA. Progressive (steps, RGB patch,
global batch) stages: 128 px x 64 for 92k steps, then 192 x 32 (64k), 256 x 16 (48k),
320 x 8 (36k), 384 x 8 (36k); the RAW patch is half the RGB one.

Arguments (`--config ssdnet_aim_s7.py:ARG`, comma-separated):
  strategy=train_resampling|test_resampling|plain   soft supervision (Table 2)
  cfm=ca_sa|sa|ca|conv|none    CFM interactions (Table 1: 4th, 3rd, 2nd, 1st, 0st)
  kernel=7                     conv-branch kernel size (Fig. 4: 3, 5, 7, 9)
  stopgrad                     stop the gradient through e_gt (the code lets it flow)
  ensemble                     x8 dihedral self-ensemble at test (the challenge entry)
"""
import ml_collections

from jisp.configs._camera import add_camera_options
from jisp.core.config import parse_arg

# (steps in the stage, RGB patch, global batch); the train loop runs them in order.
PAPER_STAGES = ((92_000, 128, 64), (64_000, 192, 32), (48_000, 256, 16),
                (36_000, 320, 8), (36_000, 384, 8))


def model_config(output="packed4", cfm="ca_sa", kernel=7):
  m = ml_collections.ConfigDict()
  m.name = "ssdnet"
  m.dim = 48
  m.enc_blocks = (4, 6, 6, 8)       # levels 1-4 (level 4 = the latent)
  m.dec_blocks = (6, 6, 4)          # decoding order: levels 3, 2, 1
  m.refinement_blocks = 4
  m.sigma_blocks = 4                # CFMs of the sigma head
  m.heads = (1, 2, 4, 8)
  m.expansion = 2.66
  m.cfm = cfm
  m.kernel_size = kernel
  m.layernorm = "bias_free"
  m.output = output                 # "packed4" (AIM) or "rgb3" (InvISP / FiveK protocol)
  m.pad_multiple = 8
  m.dtype = "float32"
  return m


def soft_config(strategy="train_resampling", stopgrad=False):
  s = ml_collections.ConfigDict()
  s.strategy = strategy
  s.alpha = 1e-3                    # weight of the sigma term (training-resampling)
  s.clip_min = 1.0 / 1024.0         # clipped-L1 floor: one 10-bit code value
  s.clip_max = 1.0
  s.stop_grad_target = stopgrad
  s.test_samples = 50               # draws averaged by sampler 'resample' (Table 2: 50, 100)
  return s


def optim_config(cosine_steps=184_000):
  o = ml_collections.ConfigDict()
  o.name = "adamw"
  o.schedule = "constant_cosine"    # peak_lr for constant_steps, then cosine to end_lr
  o.peak_lr = 3e-4
  o.end_lr = 1e-6
  o.constant_steps = 92_000
  o.cosine_steps = cosine_steps     # the paper's 184k; the code's period is 208k
  o.warmup_steps = 0
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 1e-4
  o.grad_clip_norm = 0.01
  o.ema_decay = 0.0                 # the paper and code keep no EMA
  return o


def get_config(arg=None):
  a = parse_arg(arg, strategy="train_resampling", cfm="ca_sa", kernel=7, stopgrad=False,
                ensemble=False)
  c = ml_collections.ConfigDict()
  c.task = "ssdnet"
  c.seed = 100
  c.stages = PAPER_STAGES
  c.batch_size = PAPER_STAGES[0][2]
  c.num_steps = sum(s[0] for s in PAPER_STAGES)
  c.log_every = 500
  c.checkpoint_every = 4_000
  c.eval_every = 4_000
  c.eval_batches = 8
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "aim"             # the AIM 2022 folder layout (RGB .jpg + RAW .npy / 1024)
  c.data.dir = ""
  c.data.camera = "s7"
  c.data.protocol = "aim"           # full-res sRGB with half-res packed RGGB, even crops
  c.data.patch_size = PAPER_STAGES[0][1]

  c.model = model_config("packed4", a.cfm, a.kernel)
  c.soft = soft_config(a.strategy, a.stopgrad)
  c.eval = ml_collections.ConfigDict()
  c.eval.self_ensemble = a.ensemble
  c.optim = optim_config()
  return add_camera_options(c)
