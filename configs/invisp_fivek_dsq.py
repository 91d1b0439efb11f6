"""Ablation (paper Table 1, "JPEG with DSQ"): the simulator rounds with Differentiable Soft
Quantization (tanh steps) instead of the Fourier series."""
import pathlib
from jisp.config_utils import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_fivek.py"))
  c.jpeg.rounding = "dsq"
  return c
