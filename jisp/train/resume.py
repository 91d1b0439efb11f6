"""Which config changes a resume may make, and the check that runs before anything is
restored or overwritten.

A checkpoint means something only together with the config that trained it: the model,
task, objective, optimiser, data protocol, patch and batch. Resuming with any of those
changed would either fail deep inside Orbax (a shape mismatch) or, worse, continue
silently with weights trained for something else (v- vs eps-prediction). So a resume
compares the new config with the run's `config.json` and refuses every difference except
the keys below, which only say how long to train, how often to log / evaluate / save, how
many checkpoints to keep, where to read the same data from (a copy of the folder), how to
split a step into micro-batches, and how to sample or evaluate afterwards.

Progressive stages may change only after the checkpoint: every stage begun before the
resume step keeps its start, patch and batch (extending the current stage or adding
stages after it is fine).
"""
from __future__ import annotations

import json
import os

from jisp.core import config as config_lib
from jisp.core.errors import ConfigError

# Keys (dotted) a resume may change; a key ending in "." is a group prefix.
RESUMABLE = (
    "num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "eval_batches", "micro_batch", "profile_steps", "data.dir", "stages",
    "sampling.", "eval.", "mesh.",
    # how the same function is computed, not what it is
    "cpu_conv", "model.conv_kernel_grad", "model.attention_grad",
)


def flatten(tree, prefix: str = "") -> dict:
  """{'a.b': leaf} of a nested dict (lists and tuples are leaves, compared as lists)."""
  out = {}
  for k, v in tree.items():
    key = prefix + str(k)
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = _norm(v)
  return out


def _norm(v):
  if isinstance(v, (list, tuple)):
    return [_norm(x) for x in v]
  return v


def resumable(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def config_dict(config) -> dict:
  """The JSON form written to config.json (what a later resume compares with)."""
  return json.loads(config.to_json_best_effort())


def differing_keys(saved: dict, new: dict) -> list[str]:
  """Dotted keys whose values differ (or exist on one side only), resumable ones excluded."""
  a, b = flatten(saved), flatten(new)
  return sorted(k for k in set(a) | set(b) if not resumable(k) and a.get(k, _MISSING) !=
                b.get(k, _MISSING))


_MISSING = object()


def _started_stages(cfg: dict, step: int) -> list[tuple]:
  """(start, patch, batch) of every stage with at least one step done by `step`."""
  import ml_collections
  stages = config_lib.stage_list(ml_collections.ConfigDict(cfg))
  return [(s.start, s.patch, s.batch) for s in stages if s.start < step]


def check(workdir: str, config, step: int) -> None:
  """ConfigError (one line naming the keys) unless `config` may resume the checkpoint
  at `step` of the run whose config.json is in `workdir`. No config.json (a run whose
  file was removed): nothing to compare, the restore itself still checks shapes."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  from jisp.core.fileio import read_json
  saved = read_json(path, "run config", error=ConfigError)
  new = config_dict(config)
  keys = differing_keys(saved, new)
  a, b = flatten(saved), flatten(new)
  if not keys and _started_stages(saved, step) != _started_stages(new, step):
    keys = ["stages"]
  if keys:
    shown = ", ".join(f"{k} ({_show(a.get(k, _MISSING))} -> {_show(b.get(k, _MISSING))})"
                      for k in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    raise ConfigError(
        f"{path}: cannot resume checkpoint step {step} with a changed config: {shown}{more}; "
        f"these change what the checkpoint means (resume may change only {_resumable()}): "
        "use another --workdir, or the run's own values")


def _resumable() -> str:
  """RESUMABLE in words: groups as `prefix.*`, and stages only those not yet started."""
  return ", ".join("later stages" if k == "stages" else k + "*" if k.endswith(".") else k
                   for k in RESUMABLE)


def _show(v) -> str:
  if v is _MISSING:
    return "absent"
  text = json.dumps(v)
  return text if len(text) <= 40 else text[:37] + "..."
