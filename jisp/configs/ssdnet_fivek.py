"""SSDNet with soft supervision, sRGB -> RAW on MIT-Adobe FiveK with the InvISP protocol
(full-resolution demosaiced, white-balanced RAW target), so its numbers sit next to the
other systems'. The trunk is ssdnet_aim_s7.py's; the head is a 3x3 conv 3 -> 3 at full
resolution instead of the packed RGGB one. The paper gives no FiveK schedule beyond "all
the models are trained with 276,000 iterations": the S7 one (stages and lr) is used.

Arguments (`--config ssdnet_fivek.py:ARG`): camera=nikon|canon (D700, 590 files / EOS 5D,
777), plus ssdnet_aim_s7.py's strategy, cfm, kernel, stopgrad, ensemble.
"""
from jisp.configs import ssdnet_aim_s7
from jisp.core.config import parse_arg

CAMERAS = ("nikon", "canon")


def get_config(arg=None):
  a = parse_arg(arg, camera="nikon", strategy="train_resampling", cfm="ca_sa", kernel=7,
                stopgrad=False, ensemble=False)
  if a.camera not in CAMERAS:
    raise ValueError(f"camera must be one of {CAMERAS}, got {a.camera!r}")
  c = ssdnet_aim_s7.get_config(f"strategy={a.strategy},cfm={a.cfm},kernel={a.kernel},"
                               f"stopgrad={a.stopgrad},ensemble={a.ensemble}")
  c.data.source = "synthetic"       # "synthetic" (parametric camera, no files) or "shards"
  c.data.dir = ""                   # prepared shards (jisp prepare); sets source=shards
  c.data.camera = a.camera
  c.data.protocol = "invisp"
  c.model.output = "rgb3"
  return c
