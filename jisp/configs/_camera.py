"""Config keys of the cross-camera options, shared by the sRGB <-> RAW task configs.

prior.mode (jisp.isp.prior): "none" (the papers' plain network, the default), "input",
"residual" or "both": UPI with the target camera's own metadata as extra input channels
and/or the base the network's output is added to. prior.tone: how that estimate undoes
the render's tone, "upi" (Brooks et al.'s smoothstep over gamma 2.2, the default) or
"render" (the pair protocol's own render curve; jisp.isp.tone.TONE_MODELS). prior.zero_init
(SSDNet's residual variant): its output layer starts at zero, so the untrained network is
exactly the prior.

data.source = "mixed" (jisp.data.virtual_pairs): prepared shards (data.dir) mixed with
virtual-camera pairs made on the fly; data.virtual_ratio of every batch is virtual (1: no
shards needed); data.virtual_matrices: the colour-matrix pool, "upi" (UPI's four cameras)
or "upi+data" (also the training data's cameras); data.virtual_render: "mhc" (in-process
render, Malvar-He-Cutler demosaic) or "libraw" (LibRaw itself, exact, slow).
"""
import ml_collections

MODES = ("none", "input", "residual", "both")  # jisp.isp.prior.MODES (configs use core only)


def add_camera_options(c, prior: str = "none", with_prior: bool = True):
  """Adds the keys above to config `c` (in place) and returns it."""
  if prior not in MODES:
    raise ValueError(f"prior must be one of {', '.join(MODES)}, got {prior!r}")
  if with_prior:
    c.prior = ml_collections.ConfigDict()
    c.prior.mode = prior
    c.prior.tone = "upi"
    c.prior.zero_init = False
  c.data.virtual_ratio = 0.5
  c.data.virtual_matrices = "upi+data"
  c.data.virtual_render = "mhc"
  return c
