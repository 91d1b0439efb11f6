"""SSDNet on AIM 2022 S7 with the official code's schedule (opt/SSDNet.yml) instead of the
paper's: progressive stages 128 / 160 / 192 / 256 / 320 px with global batches
96 / 64 / 48 / 16 / 16 (12 / 8 / 6 / 2 / 2 per GPU on 8 GPUs) over 92k / 64k / 48k / 36k /
36k steps, and the cosine period 208k, so the run stops above end_lr. Everything else as
ssdnet_aim_s7.py (same arguments); the code's loss slip (sigma compared with x_gt) and its
odd-offset crops are not reproduced.
"""
from jisp.configs import ssdnet_aim_s7

CODE_STAGES = ((92_000, 128, 96), (64_000, 160, 64), (48_000, 192, 48),
               (36_000, 256, 16), (36_000, 320, 16))


def get_config(arg=None):
  c = ssdnet_aim_s7.get_config(arg)
  c.stages = CODE_STAGES
  c.batch_size = CODE_STAGES[0][2]
  c.num_steps = sum(s[0] for s in CODE_STAGES)
  c.data.patch_size = CODE_STAGES[0][1]
  c.optim.cosine_steps = 208_000
  return c
