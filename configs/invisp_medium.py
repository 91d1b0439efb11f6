"""Mid-size InvISP for CPU benchmarks: the paper's 8 blocks with growth-16 dense subnets on
48x48 patches (the tiny config has 3 blocks of growth 8; the paper 8 of growth 32)."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_tiny.py"))
  c.data.patch_size = 48
  c.model.num_blocks = 8
  c.model.growth = 16
  c.optim.peak_lr = 5e-4
  return c
