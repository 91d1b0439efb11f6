"""Ablation (paper Table 2): the original DDPM beta schedule (1e-4 -> 0.02, linear)."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("ddpm_fivek.py"))
  c.diffusion.kind = "ddpm"
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  return c
