"""The Task contract: everything `train`, `eval`, `reconstruct`, `compare` and `bench` need
from a trainable system, and nothing they may guess.

A task is built from its config (plus, for tasks that use another run or a camera, the
`TaskInputs` the caller resolved: a task never reads files). The train loop owns
sharding, optimisation, EMA, checkpoints, logging and data; the inference tools own
tiling, batching and files. A task says:

  io                 what goes in and comes out of `predict` (IOSpec)
  batch_spec         shapes of one training batch
  init_params, loss, eval_metrics
  predict            inputs (B, P, P, in_channels) in [0, 1] -> outputs in [0, 1], with one
                     typed `PredictOptions` (sampler, steps, eta, ...); pure and jit-able
  resolve_options    fills the task's defaults into options and rejects what does not
                     apply (one-line OptionError)
  nfe                network evaluations of one predict call
  network            one network evaluation on one patch, for FLOP counting
  render             RAW -> sRGB for tasks whose io.direction is "both" (the flow ISP)

A new system is a new module here plus config files: every command dispatches through
this class.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp

from jisp.core.errors import OptionError
from jisp.core.flops import compiled_flops
from jisp.isp import prior as prior_lib

Params = Any
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class IOSpec:
  """What `predict` maps: batch key `source` -> batch key `target` ("rgb" / "raw").

  direction: "rgb2raw", "raw2rgb", or "both" (the task also renders RAW -> sRGB).
  conditions: what the network conditions on, in words (for help texts and reports).
  noise_channels: channels of the per-patch start noise `predict` takes (0: none, the
  task is deterministic). camera: predict uses the target camera's features
  (jisp.core.camera.camera_features, with a leading batch axis). out_scale: the output
  is 1/out_scale of the input's resolution, (B, P/s, P/s, out_channels) (2: packed RAW at
  half the sRGB's resolution, the AIM protocol); tiling keeps patch positions on
  multiples of it.
  """
  source: str
  target: str
  in_channels: int
  out_channels: int
  patch: int
  direction: str
  conditions: tuple = ()
  noise_channels: int = 0
  camera: bool = False
  window: int = 1       # frames a video task sees at once (1: still images)
  out_scale: int = 1

  @property
  def out_patch(self) -> int:
    """Side of one output patch."""
    return self.patch // self.out_scale


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  """How to run `predict`. Hashable: a jit static argument.

  sampler/steps: the sampler and its network evaluations (None: the task's default).
  eta: DDIM's (and DTDM's) noise scale. clip_x0: keep every network call's implied clean
  image in the data range (None: the task's default). start: where DTDM's plain-DDPM arms
  begin ("estimate" or "noise"). start_step: begin the chain at this timestep (benchmarks
  time a prefix of a long sampler; DTDM: the paper's x_93 protocol). net_chunk: evaluate
  the network that many patches at a time (global, a multiple of the devices; None: the
  whole batch). The solver settings (None: the config's `sampling` block): variance
  "beta" | "beta_tilde" (DDPM's sigma^2), spacing "trailing" | "leading" (DDIM's grid),
  order 1-3 and skip "logSNR" | "time_uniform" | "time_quadratic" (DPM-Solver),
  denoise_to_zero (DPM-Solver's final x0 evaluation at t=1).
  """
  sampler: str | None = None
  steps: int | None = None
  eta: float | None = None
  clip_x0: bool | None = None
  start: str | None = None
  start_step: int | None = None
  net_chunk: int | None = None
  variance: str | None = None
  spacing: str | None = None
  order: int | None = None
  skip: str | None = None
  denoise_to_zero: bool | None = None

  def replace(self, **kw) -> "PredictOptions":
    return dataclasses.replace(self, **kw)

  def extras(self) -> dict:
    """The options set beyond sampler and steps, as JSON-ready values (results files)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if v is not None and k not in ("sampler", "steps", "net_chunk")
            and not (k == "clip_x0" and v)}


# What the DDPM paper's Table 3 ran, as published ("original implementations"): DDPM-1000
# with sigma^2 = beta and x0 clipping (Ho et al.), DDIM-200 on the leading grid with eta = 0
# and no clipping (Song et al.), DPM-Solver-3 with 20 NFE, logSNR steps, ending at t = 1
# with no final denoising and no clipping (Lu et al.'s official code).
PRESETS = {
    "paper": {
        "ddpm": PredictOptions(sampler="ddpm", variance="beta", clip_x0=True),
        "ddim": PredictOptions(sampler="ddim", steps=200, eta=0.0, spacing="leading",
                               clip_x0=False),
        "dpm_solver": PredictOptions(sampler="dpm_solver", steps=20, order=3, skip="logSNR",
                                     denoise_to_zero=False, clip_x0=False),
    },
}


DETERMINISTIC = PredictOptions(sampler="none")


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What a task needs from outside its config, resolved by the caller (jisp.train.runs).

  runs: name -> workdir of another trained run whose task and params the task uses.
  camera: True when the task needs the training data's camera profile.
  """
  runs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  camera: bool = False


@dataclasses.dataclass
class TaskInputs:
  """What `Requirements` asked for: runs[name] = (task, params); camera = CameraProfile."""
  runs: dict = dataclasses.field(default_factory=dict)
  camera: Any = None


class Task(abc.ABC):
  """Base class of every trainable system (see the module docstring)."""

  name: ClassVar[str]

  def __init__(self, config, inputs: TaskInputs | None = None):
    self.config = config
    self.inputs = inputs or TaskInputs()

  # ------------------------------------------------------------------ description
  @classmethod
  def requirements(cls, config) -> Requirements:
    """What the caller must resolve before building the task (default: nothing)."""
    del config
    return Requirements()

  @classmethod
  def batch_camera(cls, config) -> bool:
    """Whether training batches carry each patch's camera features (default: no)."""
    del config
    return False

  @property
  @abc.abstractmethod
  def io(self) -> IOSpec:
    """What predict maps (see IOSpec)."""

  # ------------------------------------------------------------------ training
  @abc.abstractmethod
  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes/dtypes of one global batch (used to init and to benchmark)."""

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Params:
    ...

  @abc.abstractmethod
  def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool = True
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss (mean over the global batch) and auxiliary scalar metrics."""

  def draws(self, rng: jax.Array, batch: Batch) -> dict[str, jax.Array] | None:
    """The loss's random draws for a whole batch, each with the batch as its leading axis,
    such that `loss(params, batch, rng, draws=draws(rng, batch))` is `loss(params, batch,
    rng)`. A train step split into micro-batches (config `micro_batch`) draws them once
    for the whole batch and hands each micro-batch its rows, so splitting changes only the
    summation order, not the result. {}: the loss draws nothing. None (the default): the
    task cannot say ahead; its micro-batches then draw with keys of their own, and
    `micro_batch = "auto"` keeps its batch whole.
    """
    del rng, batch
    return None

  def eval_metrics(self, params: Params, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Scalar metrics on a held-out batch; the loop averages them over eval batches."""
    loss, aux = self.loss(params, batch, rng, train=False)
    return {"loss": loss, **aux}

  # ------------------------------------------------------------------ inference
  def default_options(self) -> PredictOptions:
    """The options `predict` runs with when a user names none (deterministic tasks)."""
    return DETERMINISTIC

  def resolve_options(self, options: PredictOptions | None = None) -> PredictOptions:
    """Options with the task's defaults filled in; OptionError for what does not apply.

    The default suits deterministic tasks: no sampler, steps or eta.
    """
    options = options or PredictOptions()
    solver = (options.steps, options.eta, options.start, options.variance, options.spacing,
              options.order, options.skip, options.denoise_to_zero)
    if options.sampler not in (None, "none") or any(v is not None for v in solver):
      raise OptionError(f"task {self.name!r} maps its input in one deterministic pass: "
                        "sampler options (steps, eta, ...) do not apply")
    return options.replace(sampler="none")

  @abc.abstractmethod
  def predict(self, params: Params, inputs: jax.Array, rng: jax.Array,
              options: PredictOptions, noise: jax.Array | None = None,
              camera: dict | None = None) -> jax.Array:
    """Outputs (B, P/s, P/s, io.out_channels) in [0, 1] (s = io.out_scale, usually 1) for
    inputs (B, P, P, io.in_channels) in [0, 1]. `options` come from `resolve_options`. noise: the start noise
    (B, P, P, io.noise_channels) of a sampling task (drawn from rng when None; tiled
    reconstruction passes its own to share it per pixel). camera: the target camera's
    features with a leading batch axis (tasks with io.camera; None: the task's default).
    Pure and jit-able."""

  def nfe(self, options: PredictOptions) -> int:
    """Network evaluations one `predict` call makes (resolved options)."""
    del options
    return 1

  @abc.abstractmethod
  def network(self, params: Params) -> tuple[Callable, tuple]:
    """(fn, args): one network evaluation on one patch, `fn(*args)`, args abstract
    (ShapeDtypeStruct) or concrete; what `network_flops` lowers."""

  def network_flops(self, params: Params) -> float | None:
    """FLOPs XLA counts for one network evaluation on one patch."""
    fn, args = self.network(params)
    return compiled_flops(jax.jit(fn).lower(*abstract(args)).compile())

  def predict_flops(self, params: Params, options: PredictOptions) -> float | None:
    """FLOPs of one predict call on one patch: nfe x one network evaluation (the
    element-wise sampler arithmetic around it is negligible next to the network)."""
    f = self.network_flops(params)
    return None if f is None else f * self.nfe(options)

  def default_camera(self):
    """The CameraProfile to write DNGs with when neither --like nor the training data name
    one (None: jisp.core.camera.DEFAULT_PROFILE)."""
    return None

  def render(self, params: Params, raw: jax.Array) -> jax.Array:
    """RAW -> sRGB rendering in [0, 1]; only for io.direction == "both"."""
    raise NotImplementedError(f"task {self.name!r} does not render RAW to sRGB")

  def render_video(self, params: Params, raw_frames: jax.Array) -> jax.Array:
    """(T, H, W, 3) RAW video -> sRGB video; only for io.direction == "both", window > 1."""
    raise NotImplementedError(f"task {self.name!r} does not render videos")

  def predict_video(self, params: Params, rgb_frames: jax.Array) -> jax.Array:
    """(T, H, W, 3) decoded sRGB video -> RAW video; only for io.window > 1."""
    raise NotImplementedError(f"task {self.name!r} does not invert videos")


class CameraPriorTask(Task):
  """A direct sRGB -> RAW predictor that can take the target camera (config `prior.mode`,
  jisp.isp.prior): with a mode other than "none" its batches carry each patch's camera
  features, and a run on prepared data needs the manifest's camera resolved."""

  @classmethod
  def requirements(cls, config):
    return Requirements(camera=cls.batch_camera(config) and bool(config.data.get("dir")))

  @classmethod
  def batch_camera(cls, config) -> bool:
    return prior_lib.mode_of(config) != "none"


def abstract(tree):
  """Shape-only version of a pytree of arrays, for lowering without data."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)
