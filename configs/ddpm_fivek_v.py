"""The paper's DDPM with v-prediction (Salimans & Ho 2022) instead of epsilon.

Not in the paper: jisp's own finding is that eps-prediction needs far longer training
before sampling from pure noise works on this task (README, "eps vs v").
"""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("ddpm_fivek.py"))
  c.diffusion.prediction = "v"
  return c
