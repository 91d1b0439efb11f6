"""A small regression U-Net (jisp.models.color_net) trained by L1, RAW -> sRGB.

DiffRAW's colour-extraction network G (the paper uses a pre-trained LiteISPNet; any RAW ->
sRGB model works, only its colour is used) and a plain baseline. sRGB -> RAW:
configs/regression_rgb2raw.py.
"""
import ml_collections

from jisp.configs._camera import add_camera_options


def get_config():
  c = ml_collections.ConfigDict()
  c.task = "regression"
  c.seed = 0
  c.batch_size = 32
  c.num_steps = 100_000
  c.log_every = 100
  c.checkpoint_every = 5_000
  c.eval_every = 5_000
  c.eval_batches = 4
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"
  c.data.dir = ""
  c.data.camera = "nikon"
  c.data.protocol = "invisp"
  c.data.patch_size = 128

  c.regression = ml_collections.ConfigDict()
  c.regression.direction = "raw2rgb"

  c.model = ml_collections.ConfigDict()
  c.model.name = "color_net"
  c.model.base_channels = 32
  c.model.channel_mults = (1, 2, 4)
  c.model.num_groups = 8
  c.model.out_channels = 3
  c.model.residual = True
  c.model.dtype = "float32"

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
  c.optim.ema_decay = 0.999
  return add_camera_options(c)
