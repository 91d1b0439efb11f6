"""Test environment: must run before anything imports jax or tensorflow."""
import os
import pathlib

from helpers import xla_flags  # plain Python: imports nothing of jax

# 8 fake CPU devices for sharding tests, and the fast-compile flags (helpers.FAST_COMPILE);
# an unknown XLA flag would kill the process, so only well-known ones are set.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # hide GPUs from TF
os.environ.setdefault("JAX_ENABLE_X64", "0")
# In-process commands (tests/helpers.cli) rebuild the same compiled functions: the
# persistent cache turns the repeats into lookups, as it does for the subprocess runs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root():
  return REPO


@pytest.fixture(scope="session")
def raw_dir():
  """Folder of real camera RAW files (JISP_RAW_DIR); tests that need it skip without it."""
  d = os.environ.get("JISP_RAW_DIR")
  if not d:
    pytest.skip("JISP_RAW_DIR not set: real-camera tests skipped")
  p = pathlib.Path(d)
  if not p.is_dir():
    pytest.skip(f"JISP_RAW_DIR={d} is not a directory")
  return p


# Whole files go to one xdist worker (--dist loadfile, with --no-loadscope-reorder in the
# Makefile so this order is the queue's): the longest files start first and the short ones
# fill in behind them, so the two workers finish together instead of one idling while the
# other runs a long file last (longest-processing-time first). Only the order depends on
# this list; a file missing from it runs after these, in collection order.
LONG_FILES_FIRST = (
    "test_every_task.py", "test_train_loop.py", "test_reliability_processes.py",
    "test_reliability_train.py", "test_camera_input.py", "test_dtdm_task.py",
    "test_ssdnet.py", "test_aim.py", "test_predict_options.py", "test_flow_task.py",
    "test_mixed_precision.py", "test_bench_predict.py", "test_flow.py",
    "test_reliability_stages.py", "test_sampler_table.py", "test_multihost_infer.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
