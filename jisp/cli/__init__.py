"""`jisp` command line: prepare | train | reconstruct | eval | compare | bench | demo.

Intentionally thin (flax examples' main.py): each command module parses its options and
calls one library function. Heavy imports happen inside the commands so `jisp --help` is
instant and the CPU device count is set before jax starts.

Failures are one line on stderr, `jisp CMD: error: ...`: a user error (jisp.core.errors)
names the file, key, option or process, with its exit status; anything else is a bug and
the line names the exception and the log file its traceback went to (WORKDIR/train.log
for `jisp train`, a file in the temp folder otherwise). `jisp --debug CMD` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

from jisp.cli import bench, compare, demo, evaluate, prepare, reconstruct, train

COMMANDS = {"train": train, "prepare": prepare, "reconstruct": reconstruct,
            "eval": evaluate, "compare": compare, "bench": bench, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jisp", description=__doc__.splitlines()[0])
  p.add_argument("--debug", action="store_true", help="show tracebacks of every error")
  sub = p.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    module.add_parser(sub, name)
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args, rest = build_parser().parse_known_args(argv)  # argparse only: jax not started yet
  from jisp.core.errors import ConfigError, UserError, missing_config_key
  try:
    from jisp.core import hostenv
    hostenv.configure()  # before anything imports jax
    return int(args.func(args, rest) or 0)
  except UserError as e:
    if args.debug:
      raise
    _say(args, str(e))
    return e.exit_code
  except KeyboardInterrupt:
    _say(args, "interrupted", prefix="")
    return 130
  except Exception as e:  # a bug, or a failure no check foresaw: one line + the log
    if args.debug:
      raise
    key = missing_config_key(e)
    if key is not None:
      _say(args, str(ConfigError(f"config lacks key '{key}' (a config file or config.json "
                                 "from another version, or a damaged one)")))
      return ConfigError.exit_code
    log = _write_traceback(args, e)
    first = (str(e).strip().splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:157] + "..."
    where = f"traceback in {log}" if log else "the traceback could not be written"
    _say(args, f"{type(e).__name__}: {first} ({where}; `jisp --debug {args.command} ...` "
               "shows it)")
    return 1


def _say(args, text: str, prefix: str = "error: ") -> None:
  print(f"jisp {args.command}: {prefix}{text}", file=sys.stderr, flush=True)


def error_log_path(args) -> str:
  """Where a traceback goes: the run's own train.log for `jisp train`, else a file in the
  temp folder (eval/reconstruct must not write into a run they only read)."""
  wd = getattr(args, "workdir", None)
  if args.command == "train" and wd and os.path.isdir(wd):
    return os.path.join(os.path.abspath(wd), "train.log")
  return os.path.join(tempfile.gettempdir(), f"jisp-{args.command}-{os.getpid()}.log")


def _write_traceback(args, e: BaseException) -> str | None:
  text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
  stamp = time.strftime("%Y-%m-%d %H:%M:%S")
  header = f"--- {stamp} jisp {' '.join(sys.argv[1:]) or args.command} (pid {os.getpid()})\n"
  for path in (error_log_path(args),
               os.path.join(tempfile.gettempdir(), f"jisp-{args.command}-{os.getpid()}.log")):
    try:
      with open(path, "a") as f:
        f.write(header + text)
      return path
    except OSError:
      continue  # a full or read-only workdir: fall back to the temp folder
  return None


if __name__ == "__main__":
  sys.exit(main())
