"""Picks the batch source a config asks for; the loop only sees next/get_state/set_state.

With `data.dir` set, the run's data keys are checked against the prepared folder's
manifest before anything is built (`check_data`): a typo or a folder of another protocol
is one ConfigError line naming the key and both values, never a silently ignored key.
"""
from __future__ import annotations

from jisp.core.camera import PROTOCOLS
from jisp.core.errors import ConfigError, DataError

SOURCES = ("synthetic", "shards", "zrr", "aim", "mixed")


def _get(dcfg, key, default=None):
  return dcfg.get(key, default) if hasattr(dcfg, "get") else getattr(dcfg, key, default)


def _source_name(dcfg) -> str:
  source = _get(dcfg, "source", "synthetic")
  if source not in SOURCES:
    raise ConfigError(f"bad value for config key 'data.source': {source!r} (expected one of "
                      f"{', '.join(repr(s) for s in SOURCES)})")
  return source


def camera_in_batch(config) -> bool:
  """Whether the config's task takes each patch's camera features from its batches
  ("rgb2cam", "wb"): the task class says so (`batch_camera(config)`; default no)."""
  if "task" not in config:
    return False
  from jisp import tasks
  fn = getattr(tasks.task_class(config), "batch_camera", None)
  return bool(fn(config)) if fn is not None else False


def uses_shards(config) -> bool:
  """Whether `config` reads prepared shards (data.dir set, or source 'shards')."""
  source = _source_name(config.data)
  if source == "mixed":
    return bool(_get(config.data, "dir")) and float(_get(config.data, "virtual_ratio", 0.5)) < 1
  if source == "aim" or _get(config.data, "protocol") == "aim":
    return False  # an AIM 2022 folder or the synthetic camera (jisp.data.aim)
  return source != "zrr" and (bool(_get(config.data, "dir")) or source == "shards")


def check_data(config, splits=("train",), verify: str = "none") -> dict | None:
  """The manifest of data.dir after checking the config against it (None when the run
  does not read prepared shards). Reads the manifest only, unless `verify` is "size"
  (a stat per shard of `splits`) or "full" (also their sha256).

  Checked: data.source / data.protocol are known names; with prepared shards,
  data.protocol equals the data's, data.patch_size <= the stored patch, data.camera
  (non-empty) names one of the manifest's cameras, and every split in `splits` has
  patches. Raises ConfigError (config vs data) or DataError (the folder itself).
  """
  from jisp.data import shards as shards_lib
  dcfg = config.data
  source = _source_name(dcfg)
  if source == "aim" or _get(dcfg, "protocol") == "aim":
    # AIM-style pairs (full-res sRGB, half-res packed RAW): an AIM 2022 folder or the
    # synthetic camera in packed mode (jisp.data.aim), never prepared shards.
    from jisp.data import aim
    aim.check_config(config)
    return None
  protocol = _get(dcfg, "protocol")
  if protocol is not None and protocol not in PROTOCOLS:
    raise ConfigError(f"bad value for config key 'data.protocol': {protocol!r} (expected one "
                      f"of {', '.join(repr(p) for p in PROTOCOLS)})")
  if source == "zrr":
    if not _get(dcfg, "dir"):
      raise ConfigError("config key 'data.dir' must name the ZRR root when data.source='zrr'")
    return None
  if not uses_shards(config):
    return None
  data_dir = _get(dcfg, "dir")
  if not data_dir:
    raise ConfigError("config key 'data.dir' must name prepared shards when "
                      "data.source='shards'")
  man = shards_lib.load_prepared(data_dir)
  where = f"{data_dir} (manifest.json)"
  if protocol is not None and man.get("protocol") != protocol:
    raise ConfigError(f"config key 'data.protocol' is {protocol!r} but {where} was prepared "
                      f"with protocol {man.get('protocol')!r}; set "
                      f"--config.data.protocol={man.get('protocol')} or prepare the data "
                      f"with --protocol {protocol}")
  patch = _get(dcfg, "patch_size")
  stored = (man.get("raw_shape") or [None])[0]
  if patch is not None and stored is not None and not 1 <= int(patch) <= int(stored):
    raise ConfigError(f"config key 'data.patch_size' is {patch} but {where} stores "
                      f"{stored}x{stored} patches; use a value in [1, {stored}] or prepare "
                      f"with --patch {patch}")
  camera = str(_get(dcfg, "camera", "") or "")
  cams = sorted(man.get("cameras") or {})
  if camera and cams and not any(camera.lower() in c.lower() for c in cams):
    raise ConfigError(f"config key 'data.camera' is {camera!r} but {where} holds "
                      f"{', '.join(repr(c) for c in cams)}; set --config.data.camera= (any "
                      "camera) or a part of one of those names")
  if source == "mixed":  # no test split: evaluation uses virtual test-split pairs
    splits = [sp for sp in splits if sp != "test"]
  for split in splits:
    if sum(int(s["n"]) for s in man.get("shards", {}).get(split, [])) == 0:
      have = sorted(k for k, v in man.get("shards", {}).items() if v)
      raise DataError(f"{data_dir}: split {split!r} has no patches (splits with data: "
                      f"{have}); re-run `jisp prepare` with more files or another --split")
    if verify != "none":
      broken = shards_lib.verify_shards(data_dir, man["shards"][split], full=verify == "full")
      if broken:
        raise DataError(f"{broken[sorted(broken)[0]]}; re-run `jisp prepare --raw-dir "
                        f"{man.get('raw_dir') or 'RAW_DIR'} --out {data_dir}` to rebuild it")
  return man


def make_source(config, split: str, *, local_batch: int, process_index: int,
                process_count: int, train: bool = True):
  dcfg = config.data
  seed = config.seed if train else config.seed + 1
  source = _source_name(dcfg)
  camera = camera_in_batch(config)
  if source == "mixed":
    return _mixed_source(config, split, local_batch=local_batch, seed=seed, train=train,
                         process_index=process_index, process_count=process_count,
                         camera=camera)
  if camera and (source in ("zrr", "aim") or _get(dcfg, "protocol") == "aim"):
    raise ConfigError(f"the task takes each patch's camera (prior.mode / dtdm.upi_profile) "
                      f"but data.source={source!r} has no camera metadata; use prepared "
                      "shards, 'mixed' or 'synthetic'")
  check_data(config, splits=(split,))
  if source == "aim" or _get(dcfg, "protocol") == "aim":
    from jisp.data import aim
    return aim.make_source(config, split, local_batch=local_batch,
                           process_index=process_index, process_count=process_count,
                           train=train)
  if source == "zrr":  # Zurich RAW-to-RGB folder layout, read directly
    from jisp.data.zrr import ZRRSource
    return ZRRSource(dcfg.dir, patch_size=dcfg.patch_size, local_batch=local_batch, seed=seed,
                     process_index=process_index, process_count=process_count,
                     split="train" if train else "test")
  if uses_shards(config):
    from jisp.data.pipeline import ShardSource  # TensorFlow only when shards are used
    return ShardSource(dcfg.dir, split, patch_size=dcfg.patch_size, local_batch=local_batch,
                       seed=seed, process_index=process_index, process_count=process_count,
                       augment=train, repeat=True, camera=camera)
  from jisp.data.synthetic import SyntheticSource
  return SyntheticSource(patch_size=dcfg.patch_size, local_batch=local_batch, seed=seed,
                         process_index=process_index, process_count=process_count,
                         split="train" if train else "test", camera=camera)


def _mixed_source(config, split, *, local_batch, seed, train, process_index, process_count,
                  camera):
  """data.source = 'mixed': prepared shards (data.dir) and virtual-camera pairs made on the
  fly (jisp.data.virtual_pairs), data.virtual_ratio of each batch virtual (1: no shards
  needed). Evaluation uses the real test split when it has patches, else virtual pairs."""
  from jisp.core.camera import CameraProfile
  from jisp.data import virtual_pairs as vp
  dcfg = config.data
  ratio = float(_get(dcfg, "virtual_ratio", 0.5))
  n_real, n_virtual = vp.split_batch(local_batch, ratio)
  data_dir = _get(dcfg, "dir")
  if n_real and not data_dir:
    raise ConfigError(f"config key 'data.dir' must name prepared shards when "
                      f"data.source='mixed' and data.virtual_ratio={ratio} < 1")
  pool = _get(dcfg, "virtual_matrices", "upi+data")
  if pool not in vp.MATRIX_POOLS:
    raise ConfigError(f"bad value for config key 'data.virtual_matrices': {pool!r} (expected "
                      f"one of {', '.join(vp.MATRIX_POOLS)})")
  extra = []
  man = check_data(config, splits=("train",)) if (data_dir and n_real) else None
  if man is not None and pool == "upi+data":
    cams = man.get("cameras") or {}
    extra = [vp.profile_matrix(CameraProfile.from_dict(cams[c])) for c in sorted(cams)]
  common = dict(process_index=process_index, process_count=process_count, seed=seed)
  if man is not None:
    from jisp.data.pipeline import ShardSource  # TensorFlow only when shards are used
    test_patches = sum(int(s["n"]) for s in man.get("shards", {}).get("test", []))
    if not train and test_patches:
      return ShardSource(data_dir, "test", patch_size=dcfg.patch_size, local_batch=local_batch,
                         augment=False, repeat=True, camera=camera, **common)
    real = ShardSource(data_dir, split, patch_size=dcfg.patch_size, local_batch=n_real,
                       augment=train, repeat=True, camera=camera, **common) if train else None
    if not n_virtual:
      return real
  else:
    real = None
  virtual = vp.VirtualPairSource(
      patch_size=dcfg.patch_size, local_batch=n_virtual if (train and real) else local_batch,
      split="train" if train else "test", protocol=_get(dcfg, "protocol", "invisp") or "invisp",
      camera=camera, extra_matrices=extra, render=_get(dcfg, "virtual_render", "mhc"), **common)
  return vp.MixedSource(real, virtual) if real is not None else virtual
