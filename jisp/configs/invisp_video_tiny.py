"""CI / demo size of video InvISP: windows of 3 frames (24x24) cut by random pans and zooms
from 32x32 still patches, the sliding-window flow, and the H.264-like codec simulator at
CRF 23 with 1-pixel dominant motion (the paper's best shift) and 0.1-pixel jitter."""
from jisp.configs import invisp_tiny


def get_config():
  c = invisp_tiny.get_config()
  c.loss.simulator = "codec"
  c.video.window = 3
  c.video.frame_size = 24
  c.video.max_pan = 1.5       # px per frame: the 24-px window stays inside the 32-px patch
  c.codec.crf = 23.0
  return c
