"""Training runs as inference (and other tasks) use them: config, task and params.

`build_task(config)` is how every command builds a task: it resolves what the task's
Requirements ask for (another run's params, the training data's camera profile), so task
constructors never read files. `load_run(workdir)` restores a trained run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from jisp import tasks
from jisp.core.camera import CameraProfile
from jisp.core import config as config_lib
from jisp.core.config import load as load_config_spec
from jisp.core.errors import ConfigError, DataError, OptionError, RunError, missing_config_key
from jisp.core.fileio import load_manifest, read_json
from jisp.tasks.base import TaskInputs
from jisp.train import checkpoint


@dataclasses.dataclass
class Run:
  workdir: str
  config: Any
  task: Any
  step: int
  params: Any


def load_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json of a `jisp train` run."""
  if not os.path.isdir(workdir):
    raise RunError(f"{workdir}: no such run directory")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise RunError(f"{workdir}: no config.json (not a jisp run directory; train first)")
  raw = read_json(path, "run config", error=RunError)
  if not isinstance(raw, dict):
    raise RunError(f"{path}: run config must be a JSON object")
  cfg = ml_collections.ConfigDict(raw)
  try:
    config_lib.validate(cfg)
  except ConfigError as e:
    raise RunError(f"{path}: {e}") from None
  return cfg


def manifest_camera(data_dir: str, hint: str = "") -> tuple[CameraProfile, str] | None:
  """(profile, name) of the prepared data's camera: the only one, else the one whose name
  contains `hint` (config data.camera), else the one with most files. None when the
  manifest lists no camera profile."""
  man = load_manifest(data_dir)
  cams = man.get("cameras") or {}
  if not cams:
    return None
  names = sorted(cams)
  if len(names) > 1 and hint:
    matching = [n for n in names if hint.lower() in n.lower()]
    names = matching if len(matching) == 1 else names
  name = max(names, key=lambda c: int(cams[c].get("files", 0) or 0))
  return CameraProfile.from_dict(cams[name], camera=name), name


def build_task(config, *, _loading: tuple = ()):
  """The task of `config` with its Requirements resolved (see the module docstring)."""
  cls = tasks.task_class(config)
  req = cls.requirements(config)
  inputs = TaskInputs()
  for name, workdir in req.runs.items():
    workdir = os.path.abspath(workdir)
    if workdir in _loading:
      raise ConfigError(f"runs depend on each other in a cycle: {' -> '.join(_loading)}")
    run = load_run(workdir, _loading=_loading + (workdir,))
    inputs.runs[name] = (run.task, run.params)
  if req.camera:
    data_dir = str(config.data.get("dir") or "")
    try:
      found = manifest_camera(data_dir, str(config.data.get("camera", "") or ""))
    except DataError as e:
      raise ConfigError(f"config key 'data.dir': {e}") from None
    inputs.camera = found[0] if found else None
  return cls(config, inputs)


def load_run(workdir, use_ema: bool = True, *, _loading: tuple = ()) -> Run:
  """Config, task and (EMA) params of the latest checkpoint of a training run."""
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  try:
    task = build_task(config, _loading=_loading or (workdir,))
    step, params = checkpoint.restore_params(workdir, task, use_ema=use_ema)
  except (AttributeError, KeyError) as e:
    key = missing_config_key(e)
    if key is None:
      raise
    raise RunError(f"{os.path.join(workdir, 'config.json')}: lacks config key '{key}' (a "
                   "damaged file, or one from another jisp version)") from None
  return Run(workdir, config, task, int(step), params)


# Methods that need no training, usable wherever a run is (`--method NAME`).
# upi_render: UPI with the pair protocol's own render curve in place of Brooks et al.'s
# tone model (jisp.isp.tone.TONE_MODELS): the strongest estimate metadata alone gives.
BASELINES = {"upi": "upi.py", "upi_render": "upi.py:tone=render"}


def baseline_run(name: str, overrides=()) -> Run:
  """A run of a method with nothing to train (its initial parameters), no workdir."""
  if name not in BASELINES:
    raise OptionError(f"unknown method {name!r} (methods without training: "
                      f"{', '.join(BASELINES)})")
  config = load_config_spec(BASELINES[name], overrides)
  task = build_task(config)
  return Run(None, config, task, 0, random_params(task))


def random_params(task, seed: int = 0):
  return jax.jit(task.init_params)(jax.random.PRNGKey(seed))
