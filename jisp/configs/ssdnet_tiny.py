"""CI / demo size of SSDNet: every part of the full model (4 levels, CFMs with both gates
and the 7x7 branch, refinement, sigma head) at dim 8 with one block per stage, on 32x32
patches of the synthetic camera (InvISP-style 3-channel RAW: output rgb3).

Arguments: output=rgb3|packed4 (packed4 needs a source of packed RAW), strategy=... as
ssdnet_aim_s7.py, prior=none|residual (jisp.isp.prior; rgb3 only). Two progressive stages exercise the loop's stage switch: 32 px x 8 for
200 steps, then 48 px x 4 for 100.
"""
import ml_collections

from jisp.configs import ssdnet_aim_s7
from jisp.configs._camera import add_camera_options
from jisp.core.config import parse_arg

TINY_STAGES = ((200, 32, 8), (100, 48, 4))


def get_config(arg=None):
  a = parse_arg(arg, output="rgb3", strategy="train_resampling", stopgrad=False,
                prior="none")
  c = ml_collections.ConfigDict()
  c.task = "ssdnet"
  c.seed = 0
  c.stages = TINY_STAGES
  c.batch_size = TINY_STAGES[0][2]
  c.num_steps = sum(s[0] for s in TINY_STAGES)
  c.log_every = 10
  c.checkpoint_every = 100
  c.eval_every = 100
  c.eval_batches = 2
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"
  c.data.dir = ""
  c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
  c.data.protocol = "invisp" if a.output == "rgb3" else "aim"
  c.data.patch_size = TINY_STAGES[0][1]

  c.model = ssdnet_aim_s7.model_config(a.output)
  c.model.dim = 8
  c.model.enc_blocks = (1, 1, 1, 1)
  c.model.dec_blocks = (1, 1, 1)
  c.model.refinement_blocks = 1
  c.model.sigma_blocks = 1
  c.soft = ssdnet_aim_s7.soft_config(a.strategy, a.stopgrad)
  c.eval = ml_collections.ConfigDict()
  c.eval.self_ensemble = False
  c.optim = ssdnet_aim_s7.optim_config()
  c.optim.peak_lr = 1e-3
  c.optim.end_lr = 1e-5
  c.optim.constant_steps = 100
  c.optim.cosine_steps = 200
  return add_camera_options(c, a.prior)
