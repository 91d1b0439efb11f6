"""Registry of trainable systems (config.task -> Task class), imported by name."""
from __future__ import annotations

import importlib

from jisp.core.errors import ConfigError

TASKS = {
    "ddpm": "jisp.tasks.ddpm:DDPMTask",
    "dtdm": "jisp.tasks.dtdm:DTDMTask",
    "flow_isp": "jisp.tasks.flow_isp:FlowISPTask",
    "regression": "jisp.tasks.regression:RegressionTask",
    "ssdnet": "jisp.tasks.ssdnet:SSDNetTask",
    "upi": "jisp.tasks.upi:UPITask",
}


def task_class(config):
  name = config.get("task")
  if name not in TASKS:
    raise ConfigError(f"bad value for config key 'task': {name!r} (known: {', '.join(TASKS)})")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def get_task(config, inputs=None):
  """The task of `config`. Tasks with Requirements (another run, a camera profile) need
  `inputs` resolved by the caller: jisp.train.runs.build_task does that."""
  return task_class(config)(config, inputs)
