"""What every CI / demo size config shares: a run of seconds per step on a 2-core CPU.

The tiny configs differ in their network and step count; the logging cadence, patch size,
camera choice, micro U-Net and fast optimiser are the same for all of them, so a change
here (a faster CI, another demo camera) reaches every system at once.
"""


def run_size(c, *, batch: int = 16, steps: int, checkpoint_every: int = 100):
  """Batch, steps, logging / eval / checkpoint cadence and 32 px patches from any camera."""
  c.batch_size = batch
  c.num_steps = steps
  c.log_every = 10
  c.checkpoint_every = checkpoint_every
  c.eval_every = 100
  c.eval_batches = 2
  c.data.patch_size = 32
  c.data.camera = ""  # any camera: the demo's and tests' data come from virtual cameras
  return c


def micro_unet(m, *, attention: bool = True):
  """Base 16, two downsamplings; with `attention`, self-attention at the lowest stage."""
  m.base_channels = 16
  m.channel_mults = (1, 2, 2)
  if attention:
    m.attention_stages = (False, False, True)
    m.num_groups = 8
  return m


def fast_optim(o):
  """A high learning rate with a short warm-up and a short EMA: minutes, not days."""
  o.peak_lr = 1e-3
  o.end_lr = 1e-5
  o.warmup_steps = 20
  o.ema_decay = 0.99
  return o
