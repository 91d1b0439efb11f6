"""Ablation (paper Table 3, JPEG quality): simulator and evaluation JPEG at quality 50.

The paper also re-saved the ground-truth sRGB at this quality; our prepared pairs keep the
protocol's q90 sRGB (jisp.data.pairs), so only the training simulator and the evaluation
codec change here.
"""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_fivek.py"))
  c.jpeg.quality = 50
  return c
