"""Loading ml_collections config files and applying `--config.a.b=value` overrides.

Every failure raises ConfigError with one line naming the offending key or value, and
happens before anything is compiled.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from typing import Iterable

import ml_collections

REQUIRED_TOP_LEVEL = ("seed", "batch_size", "num_steps", "log_every",
                      "checkpoint_every", "eval_every")


# Keys every config has, with these defaults when its file does not set them (so
# `--config.micro_batch=4` works on any config).
OPTIONAL_TOP_LEVEL = {
    "micro_batch": 0,  # examples per forward/backward inside a train step; 0 = whole batch
}


class ConfigError(ValueError):
  """A config file, key or value that cannot be used."""


def load_config_file(path) -> ml_collections.ConfigDict:
  """Import `path` and return a fresh (unlocked) ConfigDict from its get_config()."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"jisp_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a broken config file is a user error: say which file
    raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config()")
  cfg = module.get_config()
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() must return an ml_collections.ConfigDict")
  for k, v in OPTIONAL_TOP_LEVEL.items():
    if k not in cfg:
      cfg[k] = v
  return cfg


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(_all_keys(v, prefix + k + "."))
  return out


def _parse_value(key: str, text: str, current):
  """Parse `text` into the type of the current value; ConfigError naming key on failure."""
  def bad(why):
    return ConfigError(f"bad value for config key '{key}': {text!r} ({why})")

  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise bad("expected true/false")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      try:
        f = float(text)
      except ValueError:
        raise bad("expected an integer") from None
      if f.is_integer():
        return int(f)
      raise bad("expected an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("expected a number") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      v = tuple(s.strip() for s in text.split(","))
    if not isinstance(v, (tuple, list)):
      v = (v,)
    if current and len(v) and type(current[0]) is not type(v[0]):
      # (1,2) vs ("a",): keep element types consistent with the default
      try:
        v = tuple(type(current[0])(x) for x in v)
      except (TypeError, ValueError):
        raise bad(f"expected a sequence of {type(current[0]).__name__}") from None
    return type(current)(v)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  raise bad(f"cannot override a value of type {type(current).__name__}")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Apply ['--config.a.b=value', ...] (the '--config.' prefix is optional)."""
  keys = _all_keys(cfg)
  for item in overrides:
    text = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in text:
      raise ConfigError(f"override {item!r} must look like --config.key=value")
    key, value = text.split("=", 1)
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        near = difflib.get_close_matches(key, keys, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
      if i < len(parts) - 1:
        node = node[p]
    leaf = parts[-1]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"config key '{key}' is a group; set one of its fields instead")
    node[leaf] = _parse_value(key, value, current)
  return cfg


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks that need no compile: required keys and basic ranges."""
  for k in REQUIRED_TOP_LEVEL:
    if k not in cfg:
      raise ConfigError(f"config lacks required top-level key '{k}'")
  for k in ("batch_size", "num_steps", "log_every", "checkpoint_every", "eval_every"):
    if int(cfg[k]) <= 0:
      raise ConfigError(f"bad value for config key '{k}': {cfg[k]} (must be > 0)")
  if "data" in cfg and "patch_size" in cfg.data and cfg.data.patch_size % 8:
    raise ConfigError(f"bad value for config key 'data.patch_size': {cfg.data.patch_size} "
                      "(must be a multiple of 8)")
  return cfg


def load(path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  cfg = load_config_file(path)
  apply_overrides(cfg, overrides)
  validate(cfg)
  cfg.lock()
  return cfg
