"""DTDM as an accelerator for sRGB -> RAW: the DDPM paper's task and data, DTDM's process.

y = RAW (invisp protocol), condition = sRGB, x = a cheap RAW estimate from the sRGB alone,
the same at train and test time: UPI's inverse with the target camera's metadata
(`dtdm.upi_profile=auto`: each patch's own camera with real data, the test image's at
inference; UPI's mean camera on the synthetic source) or a trained
`configs/regression_rgb2raw.py` run (--config.dtdm.estimator=regression
--config.dtdm.estimator_workdir=RUN). Patches 64x64 and the U-Net of the DDPM paper; DTDM's
T=2000, s=100 and optimiser (Adam 1e-4, 10k warm-up), batch 32.
"""
from jisp.configs import dtdm_raw2rgb


def get_config(arg=None):
  c = dtdm_raw2rgb.get_config(arg)  # arguments as dtdm_raw2rgb.py (condition, color, prediction)
  c.dtdm.direction = "rgb2raw"
  c.dtdm.estimator = "upi"
  c.data.patch_size = 64
  c.model.attention_stages = (False, True, True, True)
  return c
