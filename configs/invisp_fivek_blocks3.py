"""Ablation (paper Table 3, block number): 3 invertible blocks instead of 8."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_fivek.py"))
  c.model.num_blocks = 3
  return c
