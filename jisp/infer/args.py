"""Command-line options of `jisp reconstruct`, `jisp eval` and `jisp bench sample`.

argparse only: the CLI builds its parser from these without importing jax, so `jisp --help`
stays instant; the commands' bodies (`run_reconstruct`, `run_eval`, `run_bench_sample`)
live in jisp.infer.reconstruct, jisp.infer.evaluate and jisp.bench_sample.
"""
from __future__ import annotations

SAMPLERS = ("ddpm", "ddim", "dpm_solver", "dpm_solver_pp")
DEFAULT_IMAGE = "2012x1324"  # a FiveK Nikon D700 frame (seconds per image in the bench)
NET_CHUNK_HELP = ("network micro-batch: patches per network call inside the sampler, a "
                  "multiple of the devices; 'auto' = 2 per device on CPU (cache-sized), the "
                  "whole batch on accelerators; 'none' = the whole batch")


def add_common_args(p, with_workdir=True):
  if with_workdir:
    p.add_argument("--workdir", required=True, help="training run (config.json + checkpoints)")
  p.add_argument("--sampler", default=None,
                 choices=SAMPLERS,
                 help="default: the run config's sampling.sampler")
  p.add_argument("--steps", type=int, default=None,
                 help="sampler steps (NFE for DPM-Solver); ddpm always runs all T")
  p.add_argument("--eta", type=float, default=None,
                 help="DDIM noise scale: 0 deterministic (default), 1 ancestral on the "
                      "strided grid (also DTDM's eta)")
  p.add_argument("--overlap", type=int, default=None,
                 help="pixels shared by neighbouring patches (default patch/4)")
  p.add_argument("--grid", action="store_true",
                 help="the paper's protocol: a regular grid of non-overlapping patches")
  p.add_argument("--shared-noise", action="store_true",
                 help="one initial noise field per image, shared by overlapping patches")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-batch", type=int, default=256,
                 help="patches per sampler call (bounds memory)")
  p.add_argument("--devices", type=int, default=None, help="devices to shard over (all)")
  p.add_argument("--net-chunk", default="auto", metavar="N|auto|none",
                 help=NET_CHUNK_HELP)
  p.add_argument("--no-progress", action="store_true")
  return p


def add_reconstruct_args(p):
  p.add_argument("inputs", nargs="+", metavar="INPUT", help="JPEG / PNG / TIFF images")
  p.add_argument("-o", "--out", required=True, help="output folder")
  p.add_argument("--like", default=None, metavar="REFERENCE_RAW",
                 help="take Bayer layout, levels, white balance and colour matrix from this RAW")
  return add_common_args(p)


def add_eval_args(p):
  p.add_argument("--data", required=True,
                 help="prepared folder (manifest.json: its test split) or a folder of RAWs")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  p.add_argument("--max-images", type=int, default=None, help="evaluate the first N only")
  p.add_argument("--tiling-report", action="store_true",
                 help="compare grid / overlap / overlap + shared noise on the same images")
  return add_common_args(p)


def add_bench_sample_args(p):
  """Adds `jisp bench sample` options; options the parser already has (--config, --json,
  --steps of `jisp bench`) are left as they are."""
  have = set(getattr(p, "_option_string_actions", {}))

  def add(flag, **kw):
    if flag not in have:
      p.add_argument(flag, **kw)

  add("--config", required=True, help="config file (configs/*.py)")
  add("--sampler", default=None, choices=SAMPLERS,
      help="default: the config's sampling.sampler")
  add("--steps", type=int, default=None, help="sampler steps (NFE for DPM-Solver)")
  add("--batch", type=int, default=16, help="patches per sampler call (global)")
  add("--json", action="store_true", help="print one JSON line")
  add("--workdir", default=None, help="trained run (default: random init)")
  add("--devices", type=int, default=None, help="local devices to shard over (all)")
  add("--net-chunk", default="auto", metavar="N|auto|none", help=NET_CHUNK_HELP)
  add("--repeats", type=int, default=2, help="timed runs (median reported)")
  add("--warmup", type=int, default=1, help="untimed runs after compile")
  add("--image-size", default=DEFAULT_IMAGE, help="WxH of the image for seconds/image")
  add("--timed-nfe", type=int, default=None,
      help="time a prefix of this many NFE and scale (for DDPM 1000 on slow machines)")
  add("--matmul-n", type=int, default=2048, help="matmul size for the ceiling")
  add("--seed", type=int, default=0)
  return p
