"""InvISP on the FiveK Canon EOS 5D subset: 650 official training files per epoch, so
300 x 650 = 195,000 steps with the LR halved at 32,500 and 52,000 (epochs 50 and 80)."""
import importlib.util
import pathlib


def _base():
  path = pathlib.Path(__file__).with_name("invisp_fivek.py")
  spec = importlib.util.spec_from_file_location("invisp_fivek_base", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def get_config():
  base = _base()
  c = base.get_config()
  c.data.camera = "canon"
  c.num_steps, c.optim.milestones = base.schedule(650)
  c.checkpoint_every = c.eval_every = 650 * 10
  return c
