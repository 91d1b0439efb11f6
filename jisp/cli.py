"""`jisp` command line: prepare | train | reconstruct | eval | bench | demo.

Heavy imports (jax, TensorFlow) happen inside the sub-commands so `jisp --help` is
instant and the CPU device count can be set before jax starts.
"""
from __future__ import annotations

import argparse
import os
import sys


def _default_cpu_devices() -> None:
  """On CPU hosts, split the cores into XLA devices (≈1.8x faster steps on 2 cores).

  Only the host platform reads this flag; GPU/TPU runs are unaffected. An explicit
  XLA_FLAGS device count (tests, launch scripts) wins.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return
  n = int(os.environ.get("JISP_CPU_DEVICES", "0")) or min(8, os.cpu_count() or 1)
  n = 1 << (n.bit_length() - 1)  # power of two, so common batch sizes divide
  os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


def _quiet_tf() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _split_overrides(rest: list[str]) -> list[str]:
  overrides, unknown = [], []
  for a in rest:
    (overrides if a.startswith("--config.") else unknown).append(a)
  if unknown:
    raise SystemExit(f"jisp: error: unrecognized arguments: {' '.join(unknown)}")
  return overrides


def _load_config(path, overrides):
  from jisp.config_utils import load
  return load(path, overrides)


def cmd_train(args, rest) -> int:
  overrides = _split_overrides(rest)
  cfg = _load_config(args.config, overrides)  # fails on bad keys before jax starts
  from jisp.train import distributed
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from jisp.train.loop import train
  train(cfg, args.workdir)
  return 0


def cmd_bench(args, rest) -> int:
  overrides = _split_overrides(rest)
  if args.what == "sample":
    # No jisp.data anywhere in this path: speed runs on images without TF or rawpy.
    from jisp import bench_sample
    cfg = None if args.workdir else _load_config(args.config, overrides)
    args.overrides = overrides
    return bench_sample.run_bench_sample(args, config=cfg)
  cfg = _load_config(args.config, overrides)
  from jisp import bench
  if args.what == "train":
    bench.bench_train(cfg, steps=args.steps, json_out=args.json)
    return 0
  _quiet_tf()
  bench.bench_data(cfg, steps=max(args.steps, 10), json_out=args.json)
  return 0


def cmd_reconstruct(args, rest) -> int:
  _split_overrides(rest)
  from jisp.infer import reconstruct
  return reconstruct.run_reconstruct(args)


def cmd_eval(args, rest) -> int:
  _split_overrides(rest)
  from jisp.infer import evaluate
  return evaluate.run_eval(args)


def cmd_demo(args, rest) -> int:
  _split_overrides(rest)
  from jisp import demo
  return demo.run(args.out, only=args.only, fast=args.fast)


def cmd_prepare(args, rest) -> int:
  _split_overrides(rest)
  _quiet_tf()
  from jisp.data import prepare
  return prepare.run_prepare(args)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jisp", description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train (or resume) a config in a workdir")
  t.add_argument("--config", required=True, help="config file (configs/*.py)")
  t.add_argument("--workdir", required=True, help="run directory (metrics, checkpoints)")
  t.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
  t.add_argument("--num-processes", type=int, default=None)
  t.add_argument("--process-id", type=int, default=None)
  t.set_defaults(func=cmd_train)

  from jisp.infer import args as infer_args  # argparse only: keeps --help instant
  b = sub.add_parser("bench", help="speed benchmarks, one JSON line per measurement")
  bsub = b.add_subparsers(dest="what", required=True)
  for what, doc in (("train", "patches/s and GFLOP/s of the train step, 1 and all local devices"),
                    ("data", "input pipeline vs train step; wait fraction")):
    bp = bsub.add_parser(what, help=doc)
    bp.add_argument("--config", required=True)
    bp.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    bp.add_argument("--json", action="store_true", help="print JSON lines only")
    bp.set_defaults(func=cmd_bench)
  bs = bsub.add_parser("sample", help="compiled sampler speed (no TF/rawpy needed)")
  infer_args.add_bench_sample_args(bs)
  bs.set_defaults(func=cmd_bench)

  r = sub.add_parser("reconstruct", help="sRGB images -> DNG (+ preview PNG, 16-bit TIFF)")
  infer_args.add_reconstruct_args(r)
  r.set_defaults(func=cmd_reconstruct)

  e = sub.add_parser("eval", help="RAW PSNR / SSIM of a run on held-out images; report.png")
  infer_args.add_eval_args(e)
  e.set_defaults(func=cmd_eval)

  d = sub.add_parser("demo", help="a real end-to-end run on data made offline")
  d.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
  d.add_argument("--only", default=None, help="run one stage")
  d.add_argument("--fast", action="store_true", help="fewer steps (smoke run)")
  d.set_defaults(func=cmd_demo)

  pr = sub.add_parser("prepare", help="camera RAW folder -> pre-sharded patch pairs")
  try:
    from jisp.data import prepare as _prep
    _prep.add_prepare_args(pr)
  except ImportError:  # data extras missing: the command says so when run
    pass
  pr.set_defaults(func=cmd_prepare)
  return p


def main(argv=None) -> int:
  _default_cpu_devices()
  _quiet_tf()
  argv = sys.argv[1:] if argv is None else argv
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  from jisp.config_utils import ConfigError
  try:
    return args.func(args, rest)
  except ConfigError as e:
    print(f"jisp: error: {e}", file=sys.stderr)
    return 2
  except FileNotFoundError as e:
    print(f"jisp: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("jisp: interrupted", file=sys.stderr)
    return 130
  except Exception as e:
    from jisp.train.loop import NonFiniteLoss
    if isinstance(e, NonFiniteLoss):
      print(f"jisp: error: {e}", file=sys.stderr)
      return 3
    raise


if __name__ == "__main__":
  sys.exit(main())
