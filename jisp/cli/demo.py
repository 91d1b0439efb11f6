"""`jisp demo [--out DIR] [--only STAGE] [--fast]`: a real end-to-end run on data made offline."""
from __future__ import annotations

from jisp.cli.common import split_overrides


def add_parser(sub, name):
  d = sub.add_parser(name, help="a real end-to-end run on data made offline")
  d.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
  d.add_argument("--only", default=None, help="run one stage")
  d.add_argument("--fast", action="store_true", help="fewer steps (smoke run)")
  d.set_defaults(func=run)
  return d


def run(args, rest) -> int:
  split_overrides(rest)
  from jisp.experiments import demo
  return demo.run(args.out, only=args.only, fast=args.fast)
