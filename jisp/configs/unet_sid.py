"""The SID U-Net (Chen et al. 2018) as a plain sRGB -> RAW regression baseline, InvISP
protocol (the "U-net" row of InvISP's and SSDNet's FiveK tables).

Model: jisp.models.sid_unet, widths 32..512, sRGB space-to-depth(2) in, 12 channels
depth-to-space(2) out at full resolution: 7,762,572 parameters (SID's own 4 -> 12 use has
7,760,268). Training as InvISP's code (which the paper says it reused for the U-Net):
L1, Adam 1e-4 (0.9, 0.999), batch 1, 256 x 256 crops, LR halved at epochs 50 and 80 of 300
(Nikon D700: 414 files per epoch), no EMA, no clipping. The regression task
(jisp.tasks.regression) trains it, predicts in one pass and clips to [0, 1].

Arguments (`--config unet_sid.py:ARG`): camera=nikon|canon (FiveK subset, as
invisp_fivek.py), tiny (CI/demo/benchmark: 64 px patches, batch 8, lr 3e-4, the full
7.76 M-parameter net; 128 px patches for a 2-core CPU are slower than the budget allows).
"""
import ml_collections

from jisp.configs import invisp_fivek
from jisp.core.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, camera="nikon", tiny=False)
  if a.camera not in invisp_fivek.TRAIN_FILES:
    raise ValueError(f"camera must be one of {sorted(invisp_fivek.TRAIN_FILES)}, got "
                     f"{a.camera!r}")
  num_steps, milestones = invisp_fivek.schedule(invisp_fivek.TRAIN_FILES[a.camera])
  c = ml_collections.ConfigDict()
  c.task = "regression"
  c.seed = 0
  c.batch_size = 1
  c.num_steps = num_steps
  c.log_every = 100
  c.checkpoint_every = 4_140
  c.eval_every = 4_140
  c.eval_batches = 8
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "shards" with data.dir (jisp prepare --protocol invisp)
  c.data.dir = ""
  c.data.camera = a.camera
  c.data.protocol = "invisp"
  c.data.patch_size = 256

  c.regression = ml_collections.ConfigDict()
  c.regression.direction = "rgb2raw"

  c.model = ml_collections.ConfigDict()
  c.model.name = "sid_unet"
  c.model.widths = (32, 64, 128, 256, 512)
  c.model.head = "rgb3"
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.schedule = "piecewise_constant"
  c.optim.peak_lr = 1e-4
  c.optim.end_lr = 1e-4
  c.optim.milestones = milestones
  c.optim.milestone_factor = 0.5
  c.optim.warmup_steps = 0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.optim.ema_decay = 0.0

  if a.tiny:
    c.batch_size = 8
    c.num_steps = 300
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_every = 100
    c.eval_batches = 2
    c.data.patch_size = 64
    c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
    c.optim.schedule = "constant"
    c.optim.peak_lr = 3e-4
    c.optim.milestones = ()
  return c
