"""Registry of trainable systems (config.task -> Task class), imported lazily."""
from __future__ import annotations

import importlib

_TASKS = {
    "ddpm": "jisp.tasks.ddpm:DDPMTask",
    "dtdm": "jisp.tasks.dtdm:DTDMTask",
    "flow_isp": "jisp.tasks.flow_isp:FlowISPTask",
    "regression": "jisp.tasks.regression:RegressionTask",
}


def get_task(config):
  name = config.task
  if name not in _TASKS:
    from jisp.config_utils import ConfigError
    raise ConfigError(f"bad value for config key 'task': {name!r} (known: {', '.join(_TASKS)})")
  module, cls = _TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config)
