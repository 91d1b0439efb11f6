"""The errors a user can cause, each a one-line message, and the exit status it maps to.

Every command catches `UserError` in one place (jisp.cli) and prints `jisp CMD: error: MSG`
with the exit status below; anything else is a bug: one line naming the exception and the
log file that holds its traceback (exit 1), or the traceback itself with `jisp --debug`.

Exit statuses: 0 done, 1 a bug (or reconstruct: some inputs failed), 2 a user error,
3 training diverged (NaN/inf), 130 interrupted (Ctrl-C; `jisp train` saves first).
"""
from __future__ import annotations

import os
import traceback


class UserError(Exception):
  """Bad input, file, option or config; str() is one line naming the culprit."""
  exit_code = 2

  def __str__(self) -> str:
    return " ".join(super().__str__().split())


class ConfigError(UserError, ValueError):
  """A config file, key or value that cannot be used."""


class OptionError(UserError, ValueError):
  """A command-line option (or a predict option) that does not apply or is out of range."""


class RunError(UserError, FileNotFoundError):
  """A run directory that cannot be used (no config.json, no checkpoint, ...)."""


class DataError(UserError, ValueError):
  """A data folder, manifest or shard that cannot be used."""


class InputError(UserError, ValueError):
  """An input file (image, RAW) that cannot be used."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    super().__init__(f"{self.path}: {reason}")


class NonFiniteLoss(UserError, RuntimeError):
  """Training produced NaN/inf; nothing was checkpointed from the bad state."""
  exit_code = 3


def missing_config_key(e: BaseException) -> str | None:
  """The key when `e` is ml_collections' error for a key a config lacks (a config.json
  missing a group, a config file from another version), else None."""
  if not isinstance(e, (AttributeError, KeyError)):
    return None
  tb = traceback.extract_tb(e.__traceback__)
  if not tb or os.path.join("ml_collections", "config_dict") not in tb[-1].filename:
    return None
  text = str(e.args[0] if e.args else e)
  return text.strip("\"' ") or None
