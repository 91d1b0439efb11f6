"""Mid-size InvISP for CPU benchmarks: the paper's 8 blocks with growth-16 dense subnets on
48x48 patches (the tiny config has 3 blocks of growth 8; the paper 8 of growth 32)."""
from jisp.configs import invisp_tiny


def get_config():
  c = invisp_tiny.get_config()
  c.data.patch_size = 48
  c.model.num_blocks = 8
  c.model.growth = 16
  c.optim.peak_lr = 5e-4
  return c
