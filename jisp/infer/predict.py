"""A compiled, sharded patch predictor for any task.

`PatchPredictor` runs `task.predict` over any number of patches in chunks of a few fixed
sizes: each chunk size is compiled once (ahead of time, so compile time is measured
apart), the chunk is sharded over the mesh's 'data' axis and params are replicated, and the
last chunk is padded so shapes never change. Memory is bounded by `max_batch` patches per
call. Inside the compiled predict the task's network runs on micro-batches of `net_chunk`
patches (jisp.core.microbatch).

Imports only jax / numpy and jisp's core and tasks (no jisp.data): `jisp bench sample`
uses it on machines without TensorFlow or rawpy.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import cpu_conv, microbatch, sharding
from jisp.tasks.base import PredictOptions


class PatchPredictor:
  """predictor(inputs (N, P, P, Cin), noise (N, P, P, Cn) or None, key, camera=None)
  -> (N, P/s, P/s, Cout), s = io.out_scale (1 but for half-resolution packed-RAW
  outputs); camera: one image's camera features (jisp.core.camera.camera_features), given
  to every patch, for tasks with io.camera.

  Chunk sizes are n_dev * 2^k capped at max_batch: a small image does not pay for a full
  max_batch chunk, and at most log2(max_batch / n_dev) + 1 sizes are ever compiled.
  """

  def __init__(self, task, params, options: PredictOptions | None = None, *,
               max_batch: int = 256, devices: int | None = None,
               net_chunk: int | str | None = "auto"):
    self.task = task
    self.options = task.resolve_options(options)   # validates: one-line OptionError
    self.io = task.io
    self.nfe = task.nfe(self.options)
    self.mesh = sharding.make_mesh(devices)
    self.n_dev = self.mesh.devices.size
    self.max_batch = max(self.n_dev, int(max_batch) // self.n_dev * self.n_dev)
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.net_chunk = microbatch.resolve_chunk(net_chunk, self.n_dev)
    if jax.process_count() > 1:  # host copies: every process puts its own devices' share
      params = jax.tree.map(np.asarray, params)
    self.params = jax.device_put(params, self.replicated)
    self.patch = self.io.patch
    self.out_scale = int(self.io.out_scale)
    if self.out_scale < 1 or self.patch % self.out_scale:
      raise ValueError(f"task {task.name!r}: patch {self.patch} is not a multiple of its "
                       f"output scale {self.out_scale}")
    self.out_patch = self.patch // self.out_scale
    self.noisy = self.io.noise_channels > 0
    self._compiled = {}
    self.compile_seconds = {}

    def fn(params, inputs, noise, camera, key):
      opts = self.options.replace(net_chunk=self.net_chunk_for(inputs.shape[0]))
      b = inputs.shape[0]
      cam = ({k: jnp.broadcast_to(v, (b,) + v.shape) for k, v in camera.items()}
             if camera else None)
      return task.predict(params, inputs, key, opts, noise, cam)

    bsh, rep = self.batch_sharding, self.replicated
    # Across processes every process feeds the same whole chunk and reads the whole result
    # (the gather is one all-gather of the outputs inside the call); on one process the
    # output stays sharded and the host reads the shards.
    osh = rep if jax.process_count() > 1 else bsh
    opts = cpu_conv.compiler_options(task.config, "infer")
    if self.noisy:
      self._jitted = jax.jit(fn, in_shardings=(rep, bsh, bsh, rep, rep), out_shardings=osh,
                             compiler_options=opts)
    else:
      self._jitted = jax.jit(lambda p, x, c, k: fn(p, x, None, c, k),
                             in_shardings=(rep, bsh, rep, rep), out_shardings=osh,
                             compiler_options=opts)

  @property
  def sampler(self) -> str:
    return self.options.sampler

  def net_chunk_for(self, batch: int) -> int | None:
    """The network micro-batch for a call on `batch` patches (None: the whole batch)."""
    return microbatch.chunk_for(batch, self.net_chunk, self.n_dev)

  def describe(self) -> str:
    """'ddim (20 NFE, eta=1.0)': the options as the CLI tools print them."""
    if self.options.sampler == "none":
      return "one deterministic pass"
    opts = "".join(f", {k}={v}" for k, v in self.options.extras().items())
    return f"{self.options.sampler} ({self.nfe} NFE{opts})"

  def chunk_size(self, n: int) -> int:
    b = self.n_dev
    while b < n and b < self.max_batch:
      b *= 2
    return min(b, self.max_batch)

  def _spec(self, batch, channels):
    p = self.patch
    return jax.ShapeDtypeStruct((batch, p, p, channels), jnp.float32,
                                sharding=self.batch_sharding)

  def camera_arg(self, camera) -> dict:
    """The camera argument of a compiled call: the features for io.camera tasks."""
    if not self.io.camera or camera is None:
      return {}
    return {k: jax.device_put(np.asarray(v, np.float32), self.replicated)
            for k, v in camera.items()}

  def _camera_spec(self):
    if not self.io.camera:
      return {}
    return {"rgb2cam": jax.ShapeDtypeStruct((3, 3), jnp.float32, sharding=self.replicated),
            "wb": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=self.replicated)}

  def compiled(self, batch: int, with_camera: bool = False):
    """The AOT-compiled predict for `batch` patches (batch a multiple of the devices)."""
    if batch % self.n_dev:
      raise ValueError(f"batch {batch} is not a multiple of the {self.n_dev} devices")
    key = (batch, with_camera and self.io.camera)
    if key not in self._compiled:
      args = [self.params, self._spec(batch, self.io.in_channels)]
      if self.noisy:
        args.append(self._spec(batch, self.io.noise_channels))
      args.append(self._camera_spec() if key[1] else {})
      t0 = time.perf_counter()
      self._compiled[key] = self._jitted.lower(*args, jax.random.PRNGKey(0)).compile()
      self.compile_seconds[batch] = time.perf_counter() - t0
    return self._compiled[key]

  def warm(self, n: int, camera=None) -> float:
    """Compiles the chunk size `n` patches will use; returns its compile seconds."""
    b = self.chunk_size(n)
    self.compiled(b, camera is not None)
    return self.compile_seconds[b]

  def put(self, x) -> jax.Array:
    return jax.device_put(np.asarray(x, np.float32), self.batch_sharding)

  def key(self, key) -> jax.Array:
    return jax.device_put(np.asarray(key), self.replicated)

  def run(self, fn, inputs, noise, key, camera=None):
    """One call of a compiled chunk: fn(params, inputs[, noise], camera, key)."""
    cam = camera if camera is not None else {}
    if self.noisy:
      return fn(self.params, inputs, noise, cam, key)
    return fn(self.params, inputs, cam, key)

  def __call__(self, inputs, noise, key, progress=None, camera=None) -> np.ndarray:
    """progress: None, or a callable(n_patches_done) called after each chunk; camera: the
    image's camera features (io.camera tasks; None: the task's default)."""
    inputs = np.asarray(inputs, np.float32)
    n, p = inputs.shape[0], self.patch
    if inputs.shape[1:] != (p, p, self.io.in_channels):
      raise ValueError(f"predictor: expected patches (N, {p}, {p}, {self.io.in_channels}), "
                       f"got {inputs.shape}")
    if self.noisy:
      noise = np.asarray(noise, np.float32)
      if noise.shape != (n, p, p, self.io.noise_channels):
        raise ValueError(f"predictor: noise must be {(n, p, p, self.io.noise_channels)}, "
                         f"got {noise.shape}")
    b = self.chunk_size(n)
    cam = self.camera_arg(camera)
    fn = self.compiled(b, bool(cam))
    q = self.out_patch
    out = np.empty((n, q, q, self.io.out_channels), np.float32)
    pending = None  # dispatch chunk i+1 before fetching chunk i: host and devices overlap
    for i, s in enumerate(range(0, n, b)):
      e = min(s + b, n)
      x = inputs[s:e]
      z = noise[s:e] if self.noisy else None
      if e - s < b:  # pad the last chunk: same static shape, no recompile
        pad = ((0, b - (e - s)), (0, 0), (0, 0), (0, 0))
        x = np.pad(x, pad)
        z = np.pad(z, pad) if self.noisy else None
      y = self.run(fn, self.put(x), self.put(z) if self.noisy else None,
                   self.key(jax.random.fold_in(key, i)), cam)
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
