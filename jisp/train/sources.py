"""Picks the batch source a config asks for; the loop only sees next/get_state/set_state."""
from __future__ import annotations

from jisp.core.errors import ConfigError


def make_source(config, split: str, *, local_batch: int, process_index: int,
                process_count: int, train: bool = True):
  dcfg = config.data
  seed = config.seed if train else config.seed + 1
  if dcfg.source == "zrr":  # Zurich RAW-to-RGB folder layout, read directly
    if not dcfg.dir:
      raise ConfigError("config key 'data.dir' must name the ZRR root when data.source='zrr'")
    from jisp.data.zrr import ZRRSource
    return ZRRSource(dcfg.dir, patch_size=dcfg.patch_size, local_batch=local_batch, seed=seed,
                     process_index=process_index, process_count=process_count,
                     split="train" if train else "test")
  if dcfg.dir or dcfg.source == "shards":
    if not dcfg.dir:
      raise ConfigError("config key 'data.dir' must name prepared shards when data.source='shards'")
    from jisp.data.pipeline import ShardSource  # TensorFlow only when shards are used
    return ShardSource(dcfg.dir, split, patch_size=dcfg.patch_size, local_batch=local_batch,
                       seed=seed, process_index=process_index, process_count=process_count,
                       augment=train, repeat=True)
  if dcfg.source == "synthetic":
    from jisp.data.synthetic import SyntheticSource
    return SyntheticSource(patch_size=dcfg.patch_size, local_batch=local_batch, seed=seed,
                           process_index=process_index, process_count=process_count,
                           split="train" if train else "test")
  raise ConfigError(f"bad value for config key 'data.source': {dcfg.source!r} "
                    "(expected 'synthetic', 'shards' or 'zrr')")
