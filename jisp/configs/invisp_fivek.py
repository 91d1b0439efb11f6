"""InvISP (Xing et al.), RAW <-> sRGB with one invertible flow, FiveK Nikon D700 setting.

Facts from the official code (yzxing87/Invertible-ISP, train.py, config/config.py,
dataset/FiveK_dataset.py, model/model.py): 8 blocks of (LU 1x1 conv, affine coupling with
dense-block subnets of growth 32, scale clamp 0.8); Adam lr 1e-4 (betas 0.9/0.999); batch
1; 256x256 random crops with flip + rot90; 300 epochs of one crop per training file;
MultiStepLR milestones at epochs 50 and 80, gamma 0.5; no EMA, no gradient clipping;
loss = |f(raw) - rgb|_1 + |f^-1(DiffJPEG_q90(f(raw))) - raw|_1. Epochs -> steps with the
official split lists (jisp/data/splits): Nikon D700 414 training files, so 300 x 414 =
124,200 steps with the LR halved at steps 20,700 and 33,120.

Arguments (`--config invisp_fivek.py:ARG`, comma-separated) give the paper's ablations:
  camera=nikon|canon   FiveK subset; canon has 650 official training files per epoch, so
                       300 x 650 = 195,000 steps, LR halved at 32,500 and 52,000
  blocks=N             invertible blocks (Table 3: 3, 5, 7, 9, 11; default 8)
  q=Q                  JPEG quality of the simulator and of the evaluation JPEG (Table 3:
                       30, 50, 70; default 90). The paper also re-saved the ground-truth
                       sRGB at Q; prepared pairs keep the protocol's q90 sRGB.
  sim=jpeg|none        "w/o JPEG simulation" (Table 1): no simulator between the passes;
                       still tested on real JPEGs
  rounding=fourier|dsq "JPEG with DSQ" (Table 1): Differentiable Soft Quantization
  jpeg=libjpeg|diffjpeg  the simulator: jisp's, which follows libjpeg (tables scaled as
                       libjpeg does, fancy chroma upsampling), or the official code's
                       DiffJPEG (transposed real-valued tables, repeated chroma samples,
                       always 4:2:0, Fourier K = 9), further from a real JPEG
Batch 1 cannot be split over several devices: on a multi-device host use
JISP_CPU_DEVICES=1 (CPU) or one GPU, or raise batch_size to the device count.

Rounding: the paper's Eq. 10 with K = 10 terms (the paper's value; set
--config.jpeg.fourier_terms=9 for the official code's value).
"""
import ml_collections

from jisp.core.config import parse_arg

TRAIN_FILES = {"nikon": 414, "canon": 650}   # official split lists (jisp/data/splits)
EPOCHS = 300
MILESTONE_EPOCHS = (50, 80)


def schedule(train_files):
  """(num_steps, LR milestones in steps) of the official per-epoch schedule, batch 1."""
  return EPOCHS * train_files, tuple(e * train_files for e in MILESTONE_EPOCHS)


def get_config(arg=None):
  a = parse_arg(arg, camera="nikon", blocks=8, q=90, sim="jpeg", rounding="fourier",
                jpeg="libjpeg")
  if a.camera not in TRAIN_FILES:
    raise ValueError(f"camera must be one of {sorted(TRAIN_FILES)}, got {a.camera!r}")
  files = TRAIN_FILES[a.camera]
  c = ml_collections.ConfigDict()
  c.task = "flow_isp"
  c.seed = 0
  c.batch_size = 1
  c.num_steps, milestones = schedule(files)
  c.log_every = 100
  c.checkpoint_every = files * 10   # the official code saves every 10 epochs
  c.eval_every = files * 10
  c.eval_batches = 8
  c.keep_checkpoints = 3

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "shards" with data.dir (jisp prepare --protocol invisp)
  c.data.dir = ""
  c.data.camera = a.camera     # FiveK subset: "nikon" (D700) or "canon" (EOS 5D)
  c.data.protocol = "invisp"   # demosaiced, white-balanced, gamma 1/2.2 RAW; sRGB JPEG q90
  c.data.patch_size = 256

  c.model = ml_collections.ConfigDict()
  c.model.name = "invisp_flow"
  c.model.num_blocks = a.blocks
  c.model.growth = 32
  c.model.clamp = 0.8
  c.model.zero_init_last = False  # official: xavier everywhere (see jisp/models/flow.py)
  c.model.precision = "highest"
  c.model.dtype = "float32"        # always: the exact inverse needs fp32 (bf16 is refused)

  c.loss = ml_collections.ConfigDict()
  c.loss.raw_weight = 1.0          # lambda of Eq. 8
  c.loss.simulator = a.sim         # "jpeg" | "none" | "codec" (video)

  c.jpeg = ml_collections.ConfigDict()
  c.jpeg.quality = a.q
  c.jpeg.subsampling = "4:2:2"      # the official code: PIL subsampling=1, simulator and test JPEGs
  c.jpeg.rounding = a.rounding     # fourier | ste | dsq | cubic | round
  c.jpeg.fourier_terms = 9 if a.jpeg == "diffjpeg" else 10
  c.jpeg.variant = a.jpeg          # libjpeg (jisp's) | diffjpeg (the official code's)
  c.jpeg.integer_samples = False   # True: libjpeg's 8-bit colour/chroma arithmetic as well
  c.jpeg.dsq_k = 10.0

  # Video InvISP (window > 1, odd): clips cut from still patches by random pan/zoom; see
  # configs/invisp_video_tiny.py. window = 1 is the image flow.
  c.video = ml_collections.ConfigDict()
  c.video.window = 1
  c.video.frame_size = 0           # 0: data.patch_size
  c.video.max_pan = 2.0            # px per frame
  c.video.max_zoom = 0.02          # scale change per frame

  # Codec simulator (loss.simulator = "codec"): CRF-scaled tables, random macroblock motion.
  c.codec = ml_collections.ConfigDict()
  c.codec.crf = 23.0
  c.codec.max_motion = 1.0         # M: the paper's best dominant shift (Table 5)
  c.codec.jitter = 0.1
  c.codec.intra_prob = 0.5
  c.codec.macroblock = 16

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.peak_lr = 1e-4
  c.optim.end_lr = 2.5e-5          # informational: 1e-4 after two halvings
  c.optim.warmup_steps = 0
  c.optim.schedule = "piecewise_constant"
  c.optim.milestones = milestones
  c.optim.milestone_factor = 0.5
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.optim.ema_decay = 0.0          # no EMA in the official code (EMA params == params)
  return c
