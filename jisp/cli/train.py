"""`jisp train --config F --workdir D [--config.a.b=v ...]`: train or resume.

Exit status: 0 finished (or stopped by SIGTERM after a checkpoint), 2 a user error, 3 the
run diverged, 130 Ctrl-C / SIGINT (after a checkpoint).
"""
from __future__ import annotations

from jisp.cli.common import split_overrides


def add_parser(sub, name):
  t = sub.add_parser(name, help="train (or resume) a config in a workdir")
  t.add_argument("--config", required=True,
                 help="config file or packaged config name, optionally with :ARG "
                      "(configs/ddpm_fivek.py:nres=2)")
  t.add_argument("--workdir", required=True, help="run directory (metrics, checkpoints)")
  t.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
  t.add_argument("--num-processes", type=int, default=None)
  t.add_argument("--process-id", type=int, default=None)
  t.set_defaults(func=run)
  return t


def run(args, rest) -> int:
  from jisp.core.config import load
  cfg = load(args.config, split_overrides(rest))  # fails on bad keys before jax starts
  from jisp.train import distributed
  distributed.check_layout(args.num_processes, args.process_id, args.coordinator)
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from jisp.train.loop import train
  summary = train(cfg, args.workdir)
  return 130 if summary.get("signal") == "SIGINT" else 0
