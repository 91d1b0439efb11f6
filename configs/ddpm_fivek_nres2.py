"""Ablation (paper Table 2): two residual blocks per U-Net stage."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("ddpm_fivek.py"))
  c.model.num_res_blocks = 2
  return c
