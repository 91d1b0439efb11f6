"""A trained run, restored for inference, and a compiled, sharded patch predictor.

`load_run(workdir)` reads WORKDIR/config.json (written by the train loop) and the EMA
params of the latest checkpoint. `PatchPredictor` runs `task.predict` over any number of
patches in chunks of a few fixed sizes: each chunk size is compiled once (ahead of time,
so compile time is measured apart), the chunk is sharded over the mesh's 'data' axis and
params are replicated, and the last chunk is padded so shapes never change. Memory is
bounded by `max_batch` patches per call.

Imports only jax / numpy / ml_collections and jisp's core (no jisp.data): `jisp bench
sample` uses it on machines without TensorFlow or rawpy.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jisp import tasks
from jisp.train import mesh as mesh_lib


class RunError(FileNotFoundError):
  """A workdir that cannot be used for inference; str() is one line naming it."""


@dataclasses.dataclass
class Run:
  workdir: str
  config: Any
  task: Any
  step: int
  params: Any


def load_config(workdir) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise RunError(f"{workdir}: no such run directory")
  if not os.path.isfile(path):
    raise RunError(f"{workdir}: no config.json (not a jisp run directory; train first)")
  try:
    with open(path) as f:
      cfg = json.load(f)
  except json.JSONDecodeError as e:
    raise RunError(f"{path}: not valid JSON ({e})") from None
  return ml_collections.ConfigDict(cfg)


def load_run(workdir, use_ema: bool = True) -> Run:
  """Config, task and (EMA) params of the latest checkpoint of a training run."""
  from jisp.train import checkpoint
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  task = tasks.get_task(config)
  if not hasattr(task, "predict"):
    raise RunError(f"{workdir}: task {task.name!r} has no predict()")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) or not any(
      n.isdigit() for n in os.listdir(ckpt_dir)):
    raise RunError(f"{workdir}: no checkpoint in {ckpt_dir} (train first)")
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  # Orbax warns that the checkpoint's "data" item (the data position) is not restored: we
  # want only the params, so the warning is noise here.
  absl_log.setLevel(logging.ERROR)
  try:
    step, params = checkpoint.restore_params(workdir, task, use_ema=use_ema)
  except FileNotFoundError as e:
    raise RunError(str(e)) from None
  finally:
    absl_log.setLevel(level)
  return Run(workdir, config, task, int(step), params)


def random_params(task, seed: int = 0):
  return jax.jit(task.init_params)(jax.random.PRNGKey(seed))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# Patches per device per network call on CPU. Measured on the 2-core dev VM (README
# "Speed"): the paper U-Net sampling at batch 64 runs at 205 GFLOP/s called on the whole
# batch, 244 at 8 patches per device, 309 at 2, 301 at 1; the tiny U-Net at batch 256 gains
# 25-28% with any of 2-16 per device.
# A patch's working set (XLA: ~8 MiB of temporaries for the paper U-Net, the 1024x1024
# attention matrix alone 4 MiB) only stays in cache for a patch or two per core.
# Accelerators want the whole batch.
CPU_NET_CHUNK_PER_DEVICE = 2


def resolve_net_chunk(net_chunk, n_dev: int, backend: str | None = None) -> int | None:
  """Global micro-batch size for the network ('auto', an int, or 0/None for none)."""
  if net_chunk in (None, 0, "0", "none", "off"):
    return None
  if net_chunk == "auto":
    backend = backend or jax.default_backend()
    return CPU_NET_CHUNK_PER_DEVICE * n_dev if backend == "cpu" else None
  try:
    size = int(net_chunk)
  except (TypeError, ValueError):
    raise ValueError(f"net chunk must be 'auto', 'none' or a positive integer, got "
                     f"{net_chunk!r}") from None
  if size < 0 or size % n_dev:
    raise ValueError(f"net chunk {size} must be a positive multiple of the {n_dev} devices")
  return size or None


class PatchPredictor:
  """Calls `task.predict` on patches in sharded chunks; compiled once per chunk size.

  predictor(rgb (N, P, P, 3), x_init (N, P, P, C), key) -> RAW (N, P, P, C), numpy.
  Chunk sizes are n_dev * 2^k capped at max_batch: a small image does not pay for a full
  max_batch chunk, and at most log2(max_batch / n_dev) + 1 sizes are ever compiled.
  """

  def __init__(self, task, params, *, sampler: str, steps, max_batch: int = 256,
               devices: int | None = None, sampler_kw: dict | None = None,
               net_chunk: int | str | None = "auto"):
    self.task = task
    self.sampler, self.steps = sampler, steps
    self.sampler_kw = dict(sampler_kw or {})
    self.nfe = task.nfe(sampler=sampler, steps=steps, **self.sampler_kw)  # validates options
    self.mesh = mesh_lib.make_mesh(devices)
    self.n_dev = self.mesh.devices.size
    self.max_batch = max(self.n_dev, int(max_batch) // self.n_dev * self.n_dev)
    self._rep = mesh_lib.replicated(self.mesh)
    self._bsh = mesh_lib.batch_sharding(self.mesh)
    self.net_chunk = resolve_net_chunk(net_chunk, self.n_dev)
    self.params = jax.device_put(params, self._rep)
    self.patch = task.patch
    self.channels = task.raw_channels
    self.cond_channels = task.cond_channels
    self._compiled = {}
    self.compile_seconds = {}

    def fn(params, rgb, x_init, key):
      # shapes are static under jit; tasks without a network loop ignore net_chunk
      return task.predict(params, rgb, key, sampler=sampler, steps=steps, x_init=x_init,
                          net_chunk=self.net_chunk_for(rgb.shape[0]), **self.sampler_kw)

    self._jitted = jax.jit(fn, in_shardings=(self._rep, self._bsh, self._bsh, self._rep),
                           out_shardings=self._bsh)

  def net_chunk_for(self, batch: int) -> int | None:
    """The network micro-batch for a call on `batch` patches: the largest multiple of the
    devices that divides the batch and is at most net_chunk (None: the whole batch)."""
    if not self.net_chunk or batch <= self.net_chunk:
      return None
    # batch is a multiple of n_dev, so the search ends at n_dev at the latest
    return next(size for size in range(self.net_chunk, 0, -self.n_dev) if batch % size == 0)

  def describe(self) -> str:
    """'ddim (20 NFE, eta=1.0)': the sampler as the CLI tools print it."""
    opts = "".join(f", {k}={v}" for k, v in self.sampler_kw.items())
    return f"{self.sampler} ({self.nfe} NFE{opts})"

  def chunk_size(self, n: int) -> int:
    b = self.n_dev
    while b < n and b < self.max_batch:
      b *= 2
    return min(b, self.max_batch)

  def compiled(self, batch: int):
    """The AOT-compiled sampler for `batch` patches (batch a multiple of the devices)."""
    if batch % self.n_dev:
      raise ValueError(f"batch {batch} is not a multiple of the {self.n_dev} devices")
    if batch not in self._compiled:
      p = self.patch
      spec = lambda c: jax.ShapeDtypeStruct((batch, p, p, c), jnp.float32,
                                            sharding=self._bsh)
      t0 = time.perf_counter()
      self._compiled[batch] = self._jitted.lower(
          self.params, spec(self.cond_channels), spec(self.channels),
          jax.random.PRNGKey(0)).compile()
      self.compile_seconds[batch] = time.perf_counter() - t0
    return self._compiled[batch]

  def warm(self, n: int) -> float:
    """Compiles the chunk size `n` patches will use; returns its compile seconds."""
    b = self.chunk_size(n)
    self.compiled(b)
    return self.compile_seconds[b]

  def put(self, x) -> jax.Array:
    return jax.device_put(np.asarray(x, np.float32), self._bsh)

  def __call__(self, rgb, x_init, key, progress=None) -> np.ndarray:
    """progress: None, or a callable(n_patches_done) called after each chunk."""
    rgb = np.asarray(rgb, np.float32)
    x_init = np.asarray(x_init, np.float32)
    n = rgb.shape[0]
    p = self.patch
    if rgb.shape[1:] != (p, p, self.cond_channels):
      raise ValueError(f"predictor: expected patches (N, {p}, {p}, {self.cond_channels}), "
                       f"got {rgb.shape}")
    if x_init.shape != (n, p, p, self.channels):
      raise ValueError(f"predictor: x_init must be {(n, p, p, self.channels)}, got "
                       f"{x_init.shape}")
    b = self.chunk_size(n)
    fn = self.compiled(b)
    out = np.empty((n, p, p, self.channels), np.float32)
    pending = None  # dispatch chunk i+1 before fetching chunk i: host and devices overlap
    for i, s in enumerate(range(0, n, b)):
      e = min(s + b, n)
      r, z = rgb[s:e], x_init[s:e]
      if e - s < b:  # pad the last chunk: same static shape, no recompile
        pad = ((0, b - (e - s)), (0, 0), (0, 0), (0, 0))
        r, z = np.pad(r, pad), np.pad(z, pad)
      k = jax.device_put(jax.random.fold_in(key, i), self._rep)
      y = fn(self.params, self.put(r), self.put(z), k)
      if pending is not None:
        self._fetch(out, *pending, progress)
      pending = (y, s, e)
    if pending is not None:
      self._fetch(out, *pending, progress)
    return out

  @staticmethod
  def _fetch(out, y, s, e, progress):
    out[s:e] = np.asarray(y)[:e - s]
    if progress is not None:
      progress(e - s)


# Steps a sampler gets when named without --steps (DPM-Solver: the paper's 20 NFE).
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm_solver": 20, "dpm_solver_pp": 20}


def default_sampler(config) -> tuple[str, int | None]:
  """(sampler, steps) from the config's `sampling` block, else DDIM 50."""
  s = config.get("sampling") if hasattr(config, "get") else None
  if s is None:
    return "ddim", 50
  name = s.get("sampler", "ddim")
  steps = s.get("steps", None)
  if name == "ddpm":
    steps = None
  return name, steps
