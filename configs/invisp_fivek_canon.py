"""InvISP on the FiveK Canon EOS 5D subset: 650 official training files per epoch, so
300 x 650 = 195,000 steps with the LR halved at steps 32,500 and 52,000 (epochs 50, 80)."""
import pathlib
from jisp.config_utils import load_config_file

TRAIN_FILES = 650


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("invisp_fivek.py"))
  c.data.camera = "canon"
  c.num_steps = 300 * TRAIN_FILES
  c.optim.milestones = (50 * TRAIN_FILES, 80 * TRAIN_FILES)
  c.checkpoint_every = c.eval_every = 10 * TRAIN_FILES
  return c
