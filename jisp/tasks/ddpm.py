"""Conditional DDPM for sRGB -> RAW (epsilon, v or x0 prediction, RGB concatenated to x_t).

`prior.mode` (jisp.isp.prior) makes the target camera an input: UPI's RAW estimate with
the camera's own matrix and white balance is an extra condition ("input": concat[x_t, rgb,
UPI], model.in_channels 9) and/or the base the diffusion models a residual over
("residual": x_0 = 2 (raw - UPI), the plain model's units; the sample is UPI + x_0 / 2, so
a network whose x_0 estimate is zero returns UPI exactly), or both. Each patch's camera
features come from the batch in training and from predict's camera at inference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jisp.core import cpu_conv, microbatch
from jisp.core.errors import ConfigError, OptionError
from jisp.diffusion import losses, samplers, schedules
from jisp.isp import prior as prior_lib
from jisp.models import unet
from jisp.tasks.base import CameraPriorTask, IOSpec, PredictOptions

# Steps a sampler gets when named without steps (DPM-Solver: the paper's 20 NFE).
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm_solver": 20, "dpm_solver_pp": 20}


def to_model_range(x):
  """Data lives in [0, 1]; the diffusion runs in [-1, 1] like the paper's DDPM."""
  return x * 2.0 - 1.0


def from_model_range(x):
  return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)


# The solver settings of `sampling` blocks (and PredictOptions): name -> (default, choices).
SOLVER_SETTINGS = {
    "clip_x0": (True, (True, False)),
    "variance": ("beta_tilde", ("beta_tilde", "beta")),
    "spacing": ("trailing", ("trailing", "leading")),
    "order": (3, (1, 2, 3)),
    "skip": ("logSNR", ("logSNR", "time_uniform", "time_quadratic")),
    "denoise_to_zero": (True, (True, False)),
}
# Which sampler each setting belongs to (clip_x0 applies to all).
_SETTING_OF = {"variance": ("ddpm",), "spacing": ("ddim",), "order": ("dpm_solver",),
               "skip": ("dpm_solver", "dpm_solver_pp"),
               "denoise_to_zero": ("dpm_solver", "dpm_solver_pp")}


def sampler_kwargs(options: PredictOptions) -> dict:
  """`samplers.sample` keyword arguments of resolved options.

  steps = network evaluations of the solver: "ddpm" runs all T steps (steps is None);
  "ddim" takes `steps` grid points; the DPM-Solvers take `steps` NFE and, with
  denoise_to_zero (jisp's default), one more evaluation that returns the x0-prediction at
  t=1: they stop at t=1, where x still holds noise of std sqrt(beta_1) (0.02 of the [0, 1]
  range here, a ~34 dB ceiling on RAW PSNR), which the extra evaluation removes.
  """
  kw = {}
  if options.start_step is not None:
    kw["start_step"] = int(options.start_step)
  if options.sampler == "ddpm":
    kw["variance"] = options.variance
    return kw
  kw["num_steps"] = int(options.steps)
  if options.sampler == "ddim":
    kw["spacing"] = options.spacing
    if options.eta is not None:
      kw["eta"] = float(options.eta)
  if options.sampler == "dpm_solver":
    kw["order"] = int(options.order)
  if options.sampler in ("dpm_solver", "dpm_solver_pp"):
    kw["skip"] = options.skip
    kw["denoise_to_zero"] = bool(options.denoise_to_zero)
  return kw


def resolve_sampler_options(options: PredictOptions, default: PredictOptions,
                            num_timesteps: int, task_name: str, sampling=None
                            ) -> PredictOptions:
  """Fills sampler and steps (the config's default, else DEFAULT_STEPS) and the solver
  settings (options, else the config's `sampling` block, else SOLVER_SETTINGS), and checks
  them."""
  o = options or PredictOptions()
  if o.start is not None:
    raise OptionError(f"start={o.start!r} is an option of DTDM's DDPM arms, not of {task_name}")
  sampler = o.sampler or default.sampler
  if sampler not in samplers.NAMES:
    raise OptionError(f"unknown sampler {sampler!r} for {task_name} (expected one of "
                      f"{', '.join(samplers.NAMES)})")
  steps = o.steps
  if steps is None:
    steps = default.steps if sampler == default.sampler else DEFAULT_STEPS[sampler]
  if sampler == "ddpm":
    if steps is not None and int(steps) != num_timesteps:
      raise OptionError(f"sampler 'ddpm' runs all T={num_timesteps} steps (got steps={steps}); "
                        "use ddim or dpm_solver for fewer")
    steps = None
  elif steps is None or int(steps) < 1:
    raise OptionError(f"sampler {sampler!r} needs steps >= 1, got {steps}")
  if o.eta is not None:
    if sampler != "ddim":
      raise OptionError(f"--eta is an option of the ddim sampler (and DTDM runs), not of {sampler}")
    if not o.eta >= 0:
      raise OptionError(f"eta must be >= 0, got {o.eta}")
  if o.start_step is not None and not 1 <= int(o.start_step) <= num_timesteps:
    raise OptionError(f"start_step must be in 1..{num_timesteps}, got {o.start_step}")
  settings = {}
  for name, (fallback, choices) in SOLVER_SETTINGS.items():
    given = getattr(o, name)
    if name in _SETTING_OF and sampler not in _SETTING_OF[name]:
      if given is not None:
        raise OptionError(f"{name} is a setting of {' / '.join(_SETTING_OF[name])}, not of "
                          f"{sampler}")
      settings[name] = None
      continue
    value = given if given is not None else (sampling.get(name, fallback) if sampling
                                             else fallback)
    if value not in choices:
      where = f"option {name}" if given is not None else f"config key 'sampling.{name}'"
      raise OptionError(f"bad value for {where}: {value!r} (expected one of "
                        f"{', '.join(map(str, choices))})")
    settings[name] = value
  return o.replace(sampler=sampler, steps=None if steps is None else int(steps), **settings)


class DDPMTask(CameraPriorTask):
  name = "ddpm"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    self.model = unet.from_config(config.model, cpu_conv.library(config, "train"))
    self.schedule = schedules.make_schedule(config.diffusion)
    self.prediction = config.diffusion.get("prediction", "eps")
    if self.prediction not in losses.PREDICTIONS:
      raise ConfigError(f"bad value for config key 'diffusion.prediction': {self.prediction!r} "
                        f"(expected one of {', '.join(losses.PREDICTIONS)})")
    self.patch = config.data.patch_size
    self.raw_channels = config.model.out_channels
    self.prior = prior_lib.mode_of(config)
    self.protocol = prior_lib.check_protocol(config, self.prior)
    self.prior_tone = prior_lib.tone_of(config)
    prior_lib.refuse_zero_init(config, self.name)
    prior_ch = self.raw_channels if prior_lib.takes_input(self.prior) else 0
    self.cond_channels = config.model.in_channels - config.model.out_channels - prior_ch
    if self.prior != "none" and (self.cond_channels != 3 or self.raw_channels != 3):
      want = 6 + prior_ch
      raise ConfigError(f"config key 'prior.mode'={self.prior!r}: the network sees concat[x_t, "
                        f"rgb{', UPI' if prior_ch else ''}], so 'model.in_channels' must be "
                        f"{want} and 'model.out_channels' 3 (got "
                        f"{config.model.in_channels}, {config.model.out_channels})")
    self.default_features = prior_lib.features(
        prior_lib.default_profile(config, self.inputs.camera))

  @property
  def io(self):
    cam = self.prior != "none"
    return IOSpec(source="rgb", target="raw", in_channels=self.cond_channels,
                  out_channels=self.raw_channels, patch=self.patch, direction="rgb2raw",
                  conditions=("rgb", "camera") if cam else ("rgb",),
                  noise_channels=self.raw_channels, camera=cam)

  def batch_spec(self, batch_size):
    p = self.patch
    spec = {
        "rgb": jax.ShapeDtypeStruct((batch_size, p, p, self.cond_channels), jnp.float32),
        "raw": jax.ShapeDtypeStruct((batch_size, p, p, self.raw_channels), jnp.float32),
    }
    if self.prior != "none":
      spec.update(prior_lib.feature_spec(batch_size))
    return spec

  @property
  def net_in_channels(self) -> int:
    return int(self.config.model.in_channels)

  def init_params(self, rng):
    p = self.patch
    x = jnp.zeros((1, p, p, self.net_in_channels), jnp.float32)
    return self.model.init(rng, x, jnp.ones((1,), jnp.float32))["params"]

  def eps_fn(self, params, train=False, rng=None):
    def f(net_in, t):
      rngs = {"dropout": rng} if (train and rng is not None) else None
      return self.model.apply({"params": params}, net_in, t, train=train, rngs=rngs)
    return f

  def condition(self, rgb, camera=None):
    """(cond, base): the network's condition channels (model range) and the RAW estimate
    the sample is a residual over (None for plain runs)."""
    cond = to_model_range(rgb)
    if self.prior == "none":
      return cond, None
    base = prior_lib.rgb_to_raw(rgb, self.default_features if camera is None else camera,
                                self.protocol, tone_model=self.prior_tone)
    if prior_lib.takes_input(self.prior):
      cond = jnp.concatenate([cond, to_model_range(base)], axis=-1)
    return cond, base if prior_lib.is_residual(self.prior) else None

  def draws(self, rng, batch):
    # The keys `loss` draws with: the same draws whether made here or inside the loss.
    # Dropout masks (off in the paper configs) are drawn inside the network.
    if float(self.config.model.get("dropout", 0.0)):
      return None
    _, l_rng = jax.random.split(rng)
    return losses.draw(l_rng, batch["raw"].shape, self.schedule.num_timesteps)

  def loss(self, params, batch, rng, train=True, draws=None):
    d_rng, l_rng = jax.random.split(rng)
    cond, base = self.condition(jnp.asarray(batch["rgb"], jnp.float32),
                                prior_lib.from_batch(batch))
    x0 = to_model_range(batch["raw"]) if base is None else 2.0 * (batch["raw"] - base)
    loss = losses.conditional_loss(self.eps_fn(params, train, d_rng), self.schedule,
                                   x0, cond, l_rng, self.prediction, draws)
    return loss, {}

  def eval_metrics(self, params, batch, rng):
    loss, _ = self.loss(params, batch, rng, train=False)
    return {"loss": loss}

  # ------------------------------------------------------------------ inference
  def default_options(self):
    s = self.config.get("sampling")
    if s is None:
      return PredictOptions(sampler="ddim", steps=50)
    name = s.get("sampler", "ddim")
    return PredictOptions(sampler=name, steps=None if name == "ddpm" else s.get("steps"))

  def resolve_options(self, options=None):
    return resolve_sampler_options(options, self.default_options(),
                                   self.schedule.num_timesteps, self.name,
                                   self.config.get("sampling"))

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """RAW patches in [0, 1] for sRGB patches (B, P, P, 3) in [0, 1], by conditional
    sampling; `noise` is the start x_T in the model's [-1, 1] space. camera: the target
    camera's features (prior runs; None: the run's default camera)."""
    cond, base = self.condition(jnp.asarray(inputs, jnp.float32), camera)
    init_rng, sample_rng = jax.random.split(rng)
    if noise is None:
      noise = jax.random.normal(init_rng, cond.shape[:-1] + (self.raw_channels,), jnp.float32)
    net = microbatch.microbatched(self.eps_fn(params), options.net_chunk)
    # The condition is closed over, so every sampler sees a plain eps(x_t, t).
    out = lambda x, t: net(jnp.concatenate([x, cond], axis=-1), t)
    eps = losses.as_eps_fn(out, self.schedule, self.prediction,
                           lambda t: samplers.continuous_alpha_bar(self.schedule, t))
    x0 = samplers.sample(options.sampler, eps, self.schedule, noise, sample_rng,
                         clip_x0=bool(options.clip_x0), **sampler_kwargs(options))
    if base is not None:
      return jnp.clip(base + 0.5 * x0, 0.0, 1.0)
    return from_model_range(x0)

  def default_camera(self):
    return prior_lib.default_profile(self.config) if self.prior != "none" else None

  def nfe(self, options):
    return samplers.nfe(options.sampler, num_timesteps=self.schedule.num_timesteps,
                        **sampler_kwargs(options))

  def network(self, params):
    p = self.patch
    x = jax.ShapeDtypeStruct((1, p, p, self.net_in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return (lambda prm, xx, tt: self.model.apply({"params": prm}, xx, tt, train=False),
            (params, x, t))
