"""Ablation (paper Table 2): 128x128 patches.

The paper had to shrink the batch for memory (size not stated); 64 keeps the same
number of pixels per step as 256 patches of 64x64.
"""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("ddpm_fivek.py"))
  c.data.patch_size = 128
  c.batch_size = 64
  return c
