"""Ablation (paper Table 2): U-Net base channels 32 instead of 64."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("ddpm_fivek.py"))
  c.model.base_channels = 32
  return c
