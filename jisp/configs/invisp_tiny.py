"""CI / demo size of InvISP: the same code path, 3 blocks of growth-8 dense subnets on
32x32 patches (a train step takes a fraction of a second on a 2-core CPU)."""
from jisp.configs import invisp_fivek
from jisp.configs._tiny import run_size


def get_config():
  c = invisp_fivek.get_config()
  run_size(c, batch=8, steps=200)
  c.model.num_blocks = 3
  c.model.growth = 8
  c.optim.peak_lr = 1e-3
  c.optim.schedule = "constant"
  c.optim.milestones = ()
  return c
