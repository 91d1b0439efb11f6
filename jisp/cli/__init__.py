"""`jisp` command line: prepare | train | reconstruct | eval | bench | demo.

Intentionally thin (flax examples' main.py): each command module parses its options and
calls one library function. Heavy imports happen inside the commands so `jisp --help` is
instant and the CPU device count is set before jax starts. Every user error is one line
`jisp CMD: error: ...` with its exit status (jisp.core.errors); `--debug` shows the
traceback.
"""
from __future__ import annotations

import argparse
import sys

from jisp.cli import bench, demo, evaluate, prepare, reconstruct, train

COMMANDS = {"train": train, "prepare": prepare, "reconstruct": reconstruct,
            "eval": evaluate, "bench": bench, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jisp", description=__doc__.splitlines()[0])
  p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
  sub = p.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    module.add_parser(sub, name)
  return p


def main(argv=None) -> int:
  from jisp.core import hostenv
  hostenv.configure()  # before anything imports jax
  argv = sys.argv[1:] if argv is None else list(argv)
  args, rest = build_parser().parse_known_args(argv)
  from jisp.core.errors import UserError
  try:
    return int(args.func(args, rest) or 0)
  except UserError as e:
    if args.debug:
      raise
    print(f"jisp {args.command}: error: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  except KeyboardInterrupt:
    print(f"jisp {args.command}: interrupted", file=sys.stderr, flush=True)
    return 130


if __name__ == "__main__":
  sys.exit(main())
