"""Registry of trainable systems (config.task -> Task class)."""
from __future__ import annotations


def get_task(config):
  name = config.task
  if name == "ddpm":
    from jisp.tasks.ddpm import DDPMTask
    return DDPMTask(config)
  from jisp.config_utils import ConfigError
  raise ConfigError(f"bad value for config key 'task': {name!r} (known: 'ddpm')")
