"""Ablation (paper Table 1, "w/o JPEG simulation"): no simulator between the two passes;
the inverse is trained on the exact forward output and still tested on real q90 JPEGs."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_fivek.py"))
  c.loss.simulator = "none"
  return c
