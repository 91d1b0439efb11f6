"""Loading ml_collections configs and applying `--config.a.b=value` overrides.

A config is named by a file path or by the name of a config shipped in `jisp.configs`,
optionally followed by an argument for its `get_config(arg)` (big_vision's style):

  configs/ddpm_fivek.py                  the packaged config of that name (or that file)
  ddpm_fivek.py:nres=2,camera=canon      get_config("nres=2,camera=canon")
  /path/to/my_config.py                  any file with a get_config()

Every failure raises ConfigError with one line naming the offending key or value, and
happens before anything is compiled.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import pathlib
from typing import Iterable, NamedTuple

import ml_collections

from jisp.core.errors import ConfigError

REQUIRED_TOP_LEVEL = ("seed", "batch_size", "num_steps", "log_every",
                      "checkpoint_every", "eval_every")


# Keys every config has, with these defaults when its file does not set them (so
# `--config.micro_batch=4` works on any config).
OPTIONAL_TOP_LEVEL = {
    # Examples per forward/backward inside a train step: "auto" (jisp.train.micro_batch),
    # 0 = the whole batch, or a global count.
    "micro_batch": "auto",
    "stages": (),  # progressive training: ((steps, patch, global_batch), ...); () = one stage
    # The device mesh: data x fsdp (jisp.core.sharding); arrays with at least
    # min_shard_size elements split over fsdp, unless a `replicate` regex matches.
    "mesh": {"fsdp": 1, "min_shard_size": 2 ** 14, "replicate": ()},
    "profile_steps": "",  # "a:b": a jax.profiler trace of steps a..b in WORKDIR/profile
    # Which XLA:CPU library runs convolutions: "auto" (XLA's own in train steps, YNNPACK
    # in sampling), "xla" or "ynnpack" (jisp.core.cpu_conv); accelerators ignore it.
    "cpu_conv": "auto",
}


# The one-field ablation files of earlier versions, now arguments of their base config.
ALIASES = {
    "ddpm_fivek_nres2": "ddpm_fivek:nres=2",
    "ddpm_fivek_base32": "ddpm_fivek:base=32",
    "ddpm_fivek_ddpm_schedule": "ddpm_fivek:schedule=ddpm",
    "ddpm_fivek_patch128": "ddpm_fivek:patch=128",
    "ddpm_fivek_v": "ddpm_fivek:prediction=v",
    "ddpm_fivek_beta_linear": "ddpm_fivek:schedule=beta_linear",
    "invisp_fivek_canon": "invisp_fivek:camera=canon",
    "invisp_fivek_nosim": "invisp_fivek:sim=none",
    "invisp_fivek_dsq": "invisp_fivek:rounding=dsq",
    **{f"invisp_fivek_blocks{n}": f"invisp_fivek:blocks={n}" for n in (3, 5, 7, 9, 11)},
    **{f"invisp_fivek_q{q}": f"invisp_fivek:q={q}" for q in (30, 50, 70)},
}
CONFIG_PACKAGE = "jisp.configs"


def packaged_configs() -> list[str]:
  """Names of the configs shipped in jisp.configs (found on disk: importing them is the
  loader's job, by name, like big_vision's model registry)."""
  root = pathlib.Path(__file__).resolve().parents[1] / "configs"
  return sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))


def split_spec(spec) -> tuple[str, str | None]:
  """'path.py:arg' -> ('path.py', 'arg'); 'name:arg' -> ('name', 'arg')."""
  text = str(spec)
  if ".py:" in text:
    head, _, arg = text.partition(".py:")
    return head + ".py", arg
  head, sep, arg = text.partition(":")
  if sep and "/" not in head and not pathlib.Path(text).exists():
    return head, arg
  return text, None


def _module_for(spec_path: str):
  """The module that holds the config: a file on disk, else a packaged config by name."""
  path = pathlib.Path(spec_path)
  if path.is_file():
    mod_spec = importlib.util.spec_from_file_location(f"jisp_config_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
      mod_spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is a user error: say which file
      raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
    return module, str(path)
  name = path.stem if path.suffix == ".py" else path.name
  alias = ALIASES.get(name)
  if alias is not None:
    return None, alias
  if name in packaged_configs() and path.parent.name in ("", "configs"):
    return importlib.import_module(f"{CONFIG_PACKAGE}.{name}"), f"{CONFIG_PACKAGE}.{name}"
  raise ConfigError(f"config file not found: {spec_path} (packaged configs: "
                    f"{', '.join(packaged_configs())})")


def load_config_file(spec) -> ml_collections.ConfigDict:
  """A fresh (unlocked) ConfigDict from the config named by `spec` (see the module doc)."""
  path, arg = split_spec(spec)
  module, where = _module_for(path)
  if module is None:  # an old one-field ablation file, now an argument of its base config
    base, _, alias_arg = where.partition(":")
    if arg:
      raise ConfigError(f"config {path} takes no argument (it is {where}); use {base}.py:"
                        f"{alias_arg},{arg}")
    return load_config_file(f"{base}.py:{alias_arg}")
  fn = getattr(module, "get_config", None)
  if fn is None:
    raise ConfigError(f"config file {where} has no get_config()")
  takes_arg = bool(inspect.signature(fn).parameters)
  if arg and not takes_arg:
    raise ConfigError(f"config {where} takes no argument (got {arg!r})")
  try:
    cfg = fn(arg) if takes_arg else fn()
  except ConfigError:
    raise
  except Exception as e:  # a broken config file is a user error: say which file
    raise ConfigError(f"config {where} failed to build: {type(e).__name__}: {e}") from e
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"config {where}: get_config() must return an ml_collections.ConfigDict")
  for k, v in OPTIONAL_TOP_LEVEL.items():
    if k not in cfg:
      cfg[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
  return cfg


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision's config argument: 'a=1,b=x,flag' -> {a: 1, b: 'x', flag: True} over the
  defaults, each value cast to its default's type; an unknown name is a ConfigError."""
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      near = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f" (did you mean '{near[0]}'?)" if near else ""
      raise ConfigError(f"unknown config argument '{key}'{hint} (known: "
                        f"{', '.join(defaults)})")
    out[key] = _parse_value(f"argument {key}", value if eq else "true", defaults[key])
  return out


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(_all_keys(v, prefix + k + "."))
  return out


# Keys whose value is a count or the word "auto", whichever type the config file gave.
COUNT_OR_AUTO = ("micro_batch",)


def _parse_value(key: str, text: str, current):
  """Parse `text` into the type of the current value; ConfigError naming key on failure."""
  def bad(why):
    return ConfigError(f"bad value for config key '{key}': {text!r} ({why})")

  if key in COUNT_OR_AUTO:
    if text.strip().lower() == "auto":
      return "auto"
    try:
      return int(text)
    except ValueError:
      raise bad("expected 'auto' or an integer") from None

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
    parsed = _parse_value(key, value, current)
    if key in COUNT_OR_AUTO:
      with node.ignore_type():  # "auto" over a file's int, or a count over "auto"
        node[leaf] = parsed
    else:
      node[leaf] = parsed
  return cfg


# Compute dtypes a model may name (jnp.dtype would accept "float64" and then fail later).
MODEL_DTYPES = ("float32", "bfloat16", "float16")


class Stage(NamedTuple):
  """One progressive-training stage: steps start+1 .. end at `patch` x `batch`."""
  index: int
  start: int
  end: int
  patch: int
  batch: int


def profile_range(cfg) -> tuple[int, int] | None:
  """(a, b) of `profile_steps = "a:b"` (steps a..b inclusive, 1 <= a <= b <= num_steps),
  or None when it is empty. ConfigError naming the key for anything else."""
  raw = cfg.get("profile_steps", "") if hasattr(cfg, "get") else ""
  if raw in ("", None):
    return None
  text = str(raw).strip()
  a, sep, b = text.partition(":")
  if not sep or not a.strip().isdigit() or not b.strip().isdigit():
    raise ConfigError(f"bad value for config key 'profile_steps': {raw!r} (expected 'a:b', "
                      "the first and last step to trace, e.g. '10:12')")
  a, b = int(a), int(b)
  if not 1 <= a <= b <= int(cfg.num_steps):
    raise ConfigError(f"bad value for config key 'profile_steps': {raw!r} (need 1 <= a <= b "
                      f"<= num_steps = {cfg.num_steps})")
  return a, b


def stage_list(cfg) -> tuple[Stage, ...]:
  """The run's stages from the optional top-level `stages = ((steps, patch, global_batch),
  ...)` (stage lengths summing to num_steps; the first equals data.patch_size and
  batch_size). Without `stages`, one stage covering the whole run. ConfigError naming
  'stages' for anything else."""
  num_steps = int(cfg.num_steps)
  patch0 = int(cfg.data.patch_size) if "data" in cfg and "patch_size" in cfg.data else 0
  raw = cfg.get("stages") if hasattr(cfg, "get") else None
  if raw is None or (isinstance(raw, (tuple, list)) and not raw):
    return (Stage(0, 0, num_steps, patch0, int(cfg.batch_size)),)

  def bad(why):
    return ConfigError(f"bad value for config key 'stages': {_short(raw)} ({why})")

  if not isinstance(raw, (tuple, list)):
    raise bad("expected ((steps, patch, global_batch), ...)")
  out, start = [], 0
  for i, st in enumerate(raw):
    if not isinstance(st, (tuple, list)) or len(st) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in st):
      raise bad(f"stage {i + 1} is not three integers (steps, patch, global_batch)")
    steps, patch, batch = (int(v) for v in st)
    if steps <= 0 or patch <= 0 or batch <= 0:
      raise bad(f"stage {i + 1}: steps, patch and global_batch must be > 0")
    if patch % 8:
      raise bad(f"stage {i + 1}: patch {patch} must be a multiple of 8")
    out.append(Stage(i, start, start + steps, patch, batch))
    start += steps
  if start != num_steps:
    raise bad(f"the stage lengths sum to {start} but num_steps is {num_steps}; change "
              "one so they agree")
  if (out[0].patch, out[0].batch) != (patch0, int(cfg.batch_size)):
    raise bad(f"the first stage ({out[0].patch} px, batch {out[0].batch}) must equal "
              f"data.patch_size={patch0} and batch_size={cfg.batch_size}")
  return tuple(out)


def _short(v) -> str:
  text = repr(v)
  return text if len(text) <= 80 else text[:77] + "..."


def _validate_model(m) -> None:
  """Model keys shared by the U-Net family (unet, color_net) and every model's dtype,
  checked by name: each of these crashed inside Flax or XLA before."""
  if "dtype" in m and str(m.dtype) not in MODEL_DTYPES:
    raise ConfigError(f"bad value for config key 'model.dtype': {m.dtype!r} (expected one "
                      f"of {', '.join(MODEL_DTYPES)})")
  mults = tuple(m.channel_mults) if "channel_mults" in m else None
  if "num_groups" in m:
    g = m.num_groups
    if not isinstance(g, int) or g <= 0:
      raise ConfigError(f"bad value for config key 'model.num_groups': {g!r} (must be > 0)")
    if mults is not None and "base_channels" in m:
      widths = sorted({int(m.base_channels) * int(k) for k in mults})
      if any(w % g for w in widths):
        raise ConfigError(
            f"bad value for config key 'model.num_groups': {g} does not divide the channel "
            f"widths {widths} (model.base_channels={m.base_channels} x "
            f"model.channel_mults={mults}); GroupNorm needs a divisor of every width")
  if "attention_stages" in m and mults is not None and \
      len(tuple(m.attention_stages)) != len(mults):
    raise ConfigError(
        f"bad value for config key 'model.attention_stages': {tuple(m.attention_stages)} has "
        f"{len(tuple(m.attention_stages))} entries but model.channel_mults={mults} has "
        f"{len(mults)} stages (one flag per stage)")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks that need no compile: required keys, basic ranges, model widths, stages."""
  for k in REQUIRED_TOP_LEVEL:
    if k not in cfg:
      raise ConfigError(f"config lacks required top-level key '{k}'")
  for k in ("batch_size", "num_steps", "log_every", "checkpoint_every", "eval_every"):
    if int(cfg[k]) <= 0:
      raise ConfigError(f"bad value for config key '{k}': {cfg[k]} (must be > 0)")
  for k in ("keep_checkpoints", "eval_batches"):
    if k in cfg and (not isinstance(cfg[k], int) or cfg[k] < 1):
      raise ConfigError(f"bad value for config key '{k}': {cfg[k]!r} (must be >= 1"
                        + ("; a run must keep at least its newest checkpoint)"
                           if k == "keep_checkpoints" else ")"))
  if "data" in cfg and "patch_size" in cfg.data and cfg.data.patch_size % 8:
    raise ConfigError(f"bad value for config key 'data.patch_size': {cfg.data.patch_size} "
                      "(must be a multiple of 8)")
  if "model" in cfg and isinstance(cfg.model, ml_collections.ConfigDict):
    _validate_model(cfg.model)
  if "mesh" in cfg and isinstance(cfg.mesh, ml_collections.ConfigDict):
    for k in ("fsdp", "min_shard_size"):
      v = cfg.mesh.get(k, 1)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"bad value for config key 'mesh.{k}': {v!r} (must be an integer "
                          ">= 1)")
  if "cpu_conv" in cfg:
    from jisp.core import cpu_conv
    cpu_conv.check(cfg.cpu_conv)
  stage_list(cfg)
  profile_range(cfg)
  return cfg


def load(path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  cfg = load_config_file(path)
  apply_overrides(cfg, overrides)
  validate(cfg)
  cfg.lock()
  return cfg
