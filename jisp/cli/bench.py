"""`jisp bench train|data|predict ... [--json]`: one JSON line per measurement.

`bench predict` (also `bench sample`, its former name) times any task's compiled predict.
"""
from __future__ import annotations

import json

from jisp.cli import common


def add_parser(sub, name):
  b = sub.add_parser(name, help="speed benchmarks, one JSON line per measurement")
  bsub = b.add_subparsers(dest="what", required=True)
  for what, doc in (("train", "patches/s and GFLOP/s of the train step, 1 and all local devices"),
                    ("data", "input pipeline vs train step; wait fraction")):
    bp = bsub.add_parser(what, help=doc)
    bp.add_argument("--config", required=True)
    bp.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    bp.add_argument("--json", action="store_true", help="print JSON lines only")
    if what == "train":
      bp.add_argument("--matmul-n", type=int, default=2048,
                      help="matmul size for the CPU ceiling (MFU on CPUs)")
    bp.set_defaults(func=run_train if what == "train" else run_data)
  bs = bsub.add_parser("predict", aliases=["sample"],
                       help="compiled predict (sampler) speed of any task; no TF/rawpy needed")
  bs.add_argument("--config", default=None, help="config (random init); or --workdir")
  bs.add_argument("--workdir", default=None, help="trained run (default: random init)")
  bs.add_argument("--steps", type=int, default=None, help="sampler steps (NFE for DPM-Solver)")
  bs.add_argument("--batch", type=int, default=16, help="patches per call (global)")
  bs.add_argument("--json", action="store_true", help="print one JSON line")
  bs.add_argument("--repeats", type=int, default=2, help="timed runs (median reported)")
  bs.add_argument("--warmup", type=int, default=1, help="untimed runs after compile")
  bs.add_argument("--image-size", default="2012x1324", help="WxH of the image for seconds/image")
  bs.add_argument("--timed-nfe", type=int, default=None,
                  help="time a prefix of this many NFE and scale (for DDPM 1000 on slow machines)")
  bs.add_argument("--matmul-n", type=int, default=2048, help="matmul size for the ceiling")
  common.add_predict_args(bs, steps_flag=False)
  bs.set_defaults(func=run_predict)
  bf = bsub.add_parser("profile", help="where a train step's (or a network evaluation's) "
                                       "time goes, by op category (jax.profiler trace)")
  bf.add_argument("--config", required=True)
  bf.add_argument("--what", default="train", choices=("train", "network"))
  bf.add_argument("--batch", type=int, default=None,
                  help="patches per network evaluation (default 16), or the train step's "
                       "global batch (default 32: the side-by-side batch; the config's own "
                       "batch_size only with --config.batch_size)")
  bf.add_argument("--steps", type=int, default=3, help="traced calls (after one warm-up)")
  bf.set_defaults(func=run_profile)
  bc = bsub.add_parser("convs", help="every convolution of the network alone, forward and "
                                      "gradients, on each XLA:CPU library (cpu_conv)")
  bc.add_argument("--config", required=True)
  bc.add_argument("--batch", type=int, default=4,
                  help="examples per convolution (a train step's micro-batch per device)")
  bc.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
  bc.add_argument("--json", action="store_true", help="print JSON lines only")
  bc.set_defaults(func=run_convs)
  bv = bsub.add_parser("vs-torch", help="jisp and the PyTorch peer alternated in one sitting; "
                                        "medians and the ratio")
  bv.add_argument("--peer-dir", required=True,
                  help="folder with peer_torch.py and peer_torch_train.py")
  bv.add_argument("--peer-python", required=True, help="a Python with torch and diffusers")
  bv.add_argument("--what", default="train,sample", help="train, sample or both")
  bv.add_argument("--rounds", type=int, default=2, help="alternations (medians reported)")
  bv.add_argument("--batch", type=int, default=None, help="default: 32 train, 16 sample")
  bv.add_argument("--steps", type=int, default=20, help="sampler steps")
  bv.add_argument("--sampler", default="ddim", choices=("ddim", "dpm_solver", "ddpm"))
  bv.add_argument("--config", default="configs/ddpm_fivek.py")
  bv.set_defaults(func=run_vs_torch)
  return b


def _printer(args, human):
  return lambda rec: print(json.dumps(rec) if args.json else human(rec), flush=True)


def run_train(args, rest) -> int:
  from jisp.core.config import load
  cfg = load(args.config, common.split_overrides(rest))
  from jisp.experiments import bench_train
  bench_train.bench_train(cfg, steps=args.steps, matmul_n=args.matmul_n,
                          emit=_printer(args, bench_train.human_train))
  return 0


def run_data(args, rest) -> int:
  from jisp.core.config import load
  cfg = load(args.config, common.split_overrides(rest))
  from jisp.experiments import bench_train
  bench_train.bench_data(cfg, steps=max(args.steps, 10), emit=_printer(
      args, lambda r: " ".join(f"{k}={v}" for k, v in r.items())))
  return 0


def run_predict(args, rest) -> int:
  from jisp.core.errors import OptionError
  overrides = common.split_overrides(rest)
  if not args.workdir and not args.config:
    raise OptionError("give --config (random init) or --workdir (a trained run)")
  if args.workdir and overrides:
    raise OptionError("--workdir benchmarks the run's own config: drop the --config.* "
                      "overrides")
  if args.workdir and args.config and not args.json:
    print(f"jisp bench predict: --config {args.config} ignored: the run's own config is used",
          flush=True)
  common.start_processes(args)
  cfg = None
  if not args.workdir:
    from jisp.core.config import load
    cfg = load(args.config, overrides)
  from jisp.experiments import bench_predict
  r = bench_predict.bench_predict(
      cfg, workdir=args.workdir, options=common.predict_options(args), batch=args.batch,
      devices=args.devices, repeats=args.repeats, warmup=args.warmup,
      image_size=args.image_size, timed_nfe=args.timed_nfe, matmul_n=args.matmul_n,
      seed=args.seed, net_chunk=args.net_chunk,
      log=None if args.json or not common.is_main_process()
      else (lambda m: print(m, flush=True)))
  if common.is_main_process():
    _printer(args, bench_predict.human)(r)
  return 0


def run_vs_torch(args, rest) -> int:
  common.split_overrides(rest)
  from jisp.experiments import vs_torch
  vs_torch.compare(args.what.split(","), peer_dir=args.peer_dir, peer_python=args.peer_python,
                   rounds=max(1, args.rounds), batch=args.batch, steps=args.steps,
                   sampler=args.sampler, config=args.config)
  return 0


def run_profile(args, rest) -> int:
  from jisp.core.config import load
  overrides = common.split_overrides(rest)
  if args.what == "train" and not any(o.startswith("--config.batch_size=") for o in overrides):
    # the config's own batch (256 for the paper's) would not fit a workstation's memory
    overrides = overrides + [f"--config.batch_size={args.batch or 32}"]
  elif args.what == "train" and args.batch:
    from jisp.core.errors import OptionError
    raise OptionError("give the train step's batch once: --batch or --config.batch_size")
  cfg = load(args.config, overrides)
  from jisp.experiments import machine, profile_step
  r = (profile_step.profile_train(cfg, args.steps) if args.what == "train"
       else profile_step.profile_network(cfg, args.batch or 16, args.steps))
  r.update(machine.cpu_info())
  print(json.dumps({"bench": "profile", **r}), flush=True)
  return 0


def run_convs(args, rest) -> int:
  from jisp.core.config import load
  cfg = load(args.config, common.split_overrides(rest))
  from jisp.experiments import conv_layers, machine
  from jisp.train import runs
  printer = _printer(args, conv_layers.human)
  if not args.json:
    info = machine.cpu_info()
    print(f"{info['cpu_model']} ({info['cpu_count']} cores; {' '.join(info['cpu_flags'])})",
          flush=True)
  conv_layers.bench_convs(runs.build_task(cfg), batch=args.batch, emit=printer,
                          repeats=args.repeats)
  return 0
