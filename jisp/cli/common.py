"""Options shared by several commands, and turning them into library arguments.

argparse only at import time: `jisp --help` must not start jax.
"""
from __future__ import annotations

import argparse

NET_CHUNK_HELP = ("network micro-batch: patches per network call inside the compiled "
                  "predict, a multiple of the devices; 'auto' = 2 per device on CPU "
                  "(cache-sized), the whole batch on accelerators; 'none' = the whole batch")


def split_overrides(rest: list[str]) -> list[str]:
  """The --config.a.b=v arguments; anything else is an unknown argument."""
  overrides, unknown = [], []
  for a in rest:
    (overrides if a.startswith("--config.") else unknown).append(a)
  if unknown:
    from jisp.core.errors import OptionError
    raise OptionError(f"unrecognized arguments: {' '.join(unknown)}")
  return overrides


def add_predict_args(p, steps_flag: bool = True):
  """How a task predicts: sampler options (sampling tasks) and batching."""
  p.add_argument("--sampler", default=None,
                 help="ddpm | ddim | dpm_solver | dpm_solver_pp (DDPM runs), dtdm | ddpm "
                      "(DTDM runs); default: the run config's sampling block")
  if steps_flag:
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (NFE for DPM-Solver); ddpm always runs all T")
  p.add_argument("--eta", type=float, default=None,
                 help="DDIM noise scale: 0 deterministic (default), 1 ancestral on the "
                      "strided grid (also DTDM's eta)")
  p.add_argument("--no-clip", action="store_true",
                 help="do not clip each network call's implied clean image to the data range")
  p.add_argument("--variance", default=None, choices=("beta", "beta_tilde"),
                 help="DDPM's sigma^2: beta (the DDPM paper) or beta-tilde (default: config)")
  p.add_argument("--spacing", default=None, choices=("trailing", "leading"),
                 help="DDIM's timestep grid: leading is the original DDIM code's")
  p.add_argument("--order", type=int, default=None, choices=(1, 2, 3),
                 help="DPM-Solver's order")
  p.add_argument("--skip", default=None, choices=("logSNR", "time_uniform", "time_quadratic"),
                 help="DPM-Solver's step spacing")
  p.add_argument("--final-denoise", dest="denoise_to_zero", default=None,
                 action=argparse.BooleanOptionalAction,
                 help="DPM-Solver's extra x0 evaluation at t=1 (jisp's default; the official "
                      "code has none)")
  p.add_argument("--start-step", type=int, default=None,
                 help="start the chain at this timestep (DTDM: DiffRAW's x_93 protocol)")
  p.add_argument("--preset", default=None, choices=("paper",),
                 help="'paper': the DDPM paper's Table 3 samplers as published (with "
                      "--sampler ddpm | ddim | dpm_solver: DDPM-1000 sigma^2=beta clipped, "
                      "DDIM-200 leading eta=0 unclipped, DPM-Solver-3 20 NFE unclipped); "
                      "explicit flags still win")
  p.add_argument("--devices", type=int, default=None, help="devices to shard over (all)")
  p.add_argument("--net-chunk", default="auto", metavar="N|auto|none", help=NET_CHUNK_HELP)
  p.add_argument("--seed", type=int, default=0)
  add_process_args(p)
  return p


def add_process_args(p):
  """Multi-process runs (as `jisp train`): flags, or JISP_COORDINATOR / JISP_NUM_PROCESSES /
  JISP_PROCESS_ID, or JISP_DISTRIBUTED=auto on SLURM and Cloud TPU."""
  if any(a.dest == "coordinator" for a in p._actions):
    return p
  p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  return p


def start_processes(args) -> bool:
  """Joins the other processes of a multi-process command (before jax computes anything);
  True when there are several. Every process then runs the same command on the same
  inputs: the patches of each compiled call are spread over every process's devices and
  the results come back to all, so all write the same files; only process 0 writes them
  where asked (`process_out`)."""
  from jisp.train import distributed
  return distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def is_main_process() -> bool:
  import jax
  return jax.process_index() == 0


def process_out(path):
  """Where this process writes what was asked to go to `path`: `path` itself on process 0,
  a private scratch folder (removed at exit) on the others, so the files are written once
  and no two processes race on one name."""
  import jax
  if jax.process_index() == 0:
    return path
  import atexit
  import shutil
  import tempfile
  scratch = tempfile.mkdtemp(prefix=f"jisp-process{jax.process_index()}-")
  atexit.register(shutil.rmtree, scratch, True)
  return scratch


def add_tiling_args(p):
  p.add_argument("--overlap", type=int, default=None,
                 help="pixels shared by neighbouring patches (default patch/4)")
  p.add_argument("--grid", action="store_true",
                 help="the paper's protocol: a regular grid of non-overlapping patches")
  p.add_argument("--shared-noise", action="store_true",
                 help="one initial noise field per image, shared by overlapping patches")
  p.add_argument("--max-batch", type=int, default=256,
                 help="patches per compiled call (bounds memory)")
  p.add_argument("--no-progress", action="store_true")
  return p


def add_run_args(p, out_help=None):
  """--workdir RUN, or --method NAME for a method that needs no training (UPI)."""
  p.add_argument("--workdir", default=None, help="training run (config.json + checkpoints)")
  p.add_argument("--method", default=None, metavar="NAME",
                 help="instead of a trained run: a method without training ('upi', or"
                      " 'upi_render': UPI with the protocol's render curve)")
  p.add_argument("--params", default="ema", choices=("ema", "raw"),
                 help="the run's EMA parameters (default) or its raw ones (the papers use "
                      "no EMA)")
  return p


def load_run(args):
  """The run the command works on: --workdir, or --method's baseline run."""
  from jisp.core.errors import OptionError
  from jisp.train import runs
  if bool(args.workdir) == bool(args.method):
    raise OptionError("give --workdir (a trained run) or --method (e.g. upi), not both")
  if args.workdir:
    return runs.load_run(args.workdir, use_ema=getattr(args, "params", "ema") == "ema")
  return runs.baseline_run(args.method)


def predict_options(args):
  """PredictOptions of the parsed sampler flags (a preset first, explicit flags over it)."""
  import dataclasses
  from jisp.core.errors import OptionError
  from jisp.tasks.base import PRESETS, PredictOptions
  given = dict(sampler=args.sampler, steps=getattr(args, "steps", None), eta=args.eta,
               clip_x0=False if args.no_clip else None, variance=args.variance,
               spacing=args.spacing, order=args.order, skip=args.skip,
               denoise_to_zero=args.denoise_to_zero, start_step=args.start_step)
  if not args.preset:
    return PredictOptions(**given)
  sampler = args.sampler or "ddpm"
  if sampler not in PRESETS[args.preset]:
    raise OptionError(f"--preset {args.preset} has the samplers "
                      f"{', '.join(PRESETS[args.preset])}, not {sampler!r}")
  base = PRESETS[args.preset][sampler]
  return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def make_predictor(run, args):
  from jisp.infer.predict import PatchPredictor
  return PatchPredictor(run.task, run.params, predict_options(args),
                        max_batch=getattr(args, "max_batch", 256), devices=args.devices,
                        net_chunk=args.net_chunk)
