"""`jisp prepare --raw-dir S --out D`: camera RAW folder -> pre-sharded patch pairs."""
from __future__ import annotations

from jisp.cli.common import split_overrides


def add_parser(sub, name):
  p = sub.add_parser(name, help="camera RAW folder -> pre-sharded patch pairs")
  try:
    from jisp.data.prepare import add_prepare_args  # argparse only (no TF at import)
  except ImportError:  # a JAX-only install: the command says what is missing when run
    p.set_defaults(func=_missing)
    return p
  add_prepare_args(p)
  p.set_defaults(func=run)
  return p


def _missing(args, rest) -> int:
  from jisp.core.errors import UserError
  raise UserError("jisp prepare needs the data extras (TensorFlow, rawpy): "
                  "pip install 'jisp[data]'")


def run(args, rest) -> int:
  split_overrides(rest)
  from jisp.data import prepare
  return prepare.run_prepare(args)
