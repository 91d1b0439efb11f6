"""CI / demo size of InvISP: the same code path, 3 blocks of growth-8 dense subnets on
32x32 patches (a train step takes a fraction of a second on a 2-core CPU)."""
from jisp.configs import invisp_fivek


def get_config():
  c = invisp_fivek.get_config()
  c.batch_size = 8
  c.num_steps = 200
  c.log_every = 10
  c.checkpoint_every = 100
  c.eval_every = 100
  c.eval_batches = 2
  c.data.patch_size = 32
  c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
  c.model.num_blocks = 3
  c.model.growth = 8
  c.optim.peak_lr = 1e-3
  c.optim.schedule = "constant"
  c.optim.milestones = ()
  return c
