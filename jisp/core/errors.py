"""The errors a user can cause, each a one-line message, and the exit status it maps to.

Every command catches `UserError` in one place (jisp.cli) and prints `jisp CMD: error: MSG`;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


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
