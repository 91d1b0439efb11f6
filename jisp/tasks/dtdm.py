"""DTDM tasks: DiffRAW (RAW -> sRGB) and DTDM-accelerated sRGB -> RAW, plus DDPM ablations.

`config.dtdm.direction`:
  raw2rgb  (DiffRAW) y = sRGB ("rgb"); RAW condition w = batch "raw". DiffRAW feeds packed
           smartphone Bayer brought to the output resolution; here w is the invisp-protocol
           demosaiced RAW, which already is at output resolution and carries the same
           structure (a ZRR mosaic goes through jisp.data.zrr to the same form).
           Training: x = c = D^2(y) (jisp.isp.degrade, colour kept). Test: x = c = G(w), G =
           `dtdm.estimator`: "regression" (a trained RegressionTask run, raw2rgb, named by
           `dtdm.estimator_workdir`) or "upi" (UPI's forward `process`, no learning).
  rgb2raw  y = RAW ("raw"), condition = sRGB. x = a cheap RAW estimate from the sRGB alone,
           identical at train and test time: "upi" (UPI inverse `unprocess` with a camera
           profile, `dtdm.upi_profile`) or "regression" (a trained rgb2raw RegressionTask).

The camera of the UPI estimator (and of colour c = "upi"), `dtdm.upi_profile`: "camera" is
the target camera's own metadata: each patch's features from the batch in training, the
test image's (or `--like`'s) at inference through predict's camera; "auto" is "camera"
with real data (data.dir or data.source = "mixed") and UPI's mean camera on the synthetic
source; "mean", "synthetic" and "manifest" (data.dir's camera) fix one camera. A
regression estimator that itself takes the camera (prior.mode) gets the same features.
`dtdm.upi_tone`: how the UPI estimator undoes the render's tone, "upi" (Brooks et al.'s
model) or "render" (the pair protocol's own curve; jisp.isp.tone.TONE_MODELS).

Network: the jisp U-Net on concat[m_t, condition, x] (9 channels) and t (c = x, so the
colour-position condition is the estimate itself, as in the paper). Data live in [0, 1];
the diffusion runs in [-1, 1].

`config.dtdm.prediction`: what the network outputs (jisp.diffusion.dtdm.PREDICTIONS): "f",
the paper's gamma_s (x - y) + eps; "residual", r with y_hat = x + r over the estimate,
trained on || x + r - y ||^2, so a zero network (model.zero_out starts it there) samples
the estimate itself. DTDM's process only; the DDPM arms predict epsilon.

`config.dtdm.process`:
  dtdm  the DTDM loss (t ~ U{1..s}) and sampler (s steps from x_s; fewer = strided).
  ddpm  the ablation baseline with the same network, inputs and data: the plain
        epsilon-loss over t ~ U{1..T}; sampling per `dtdm.ddpm_start`: "estimate" starts
        plain DDPM from the noised estimate x_s = sqrt(ab_s) x + sqrt(1-ab_s) eps and runs s
        steps (SDEdit-like), "noise" starts from pure noise and runs all T steps.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import cpu_conv, metrics, microbatch
from jisp.core.camera import SYNTHETIC_CAM2RGB
from jisp.core.errors import ConfigError, OptionError
from jisp.diffusion import dtdm, losses, samplers, schedules
from jisp.isp import degrade, upi
from jisp.isp import prior as prior_lib
from jisp.models import unet
from jisp.tasks.base import DETERMINISTIC, IOSpec, PredictOptions, Requirements, Task
from jisp.tasks.ddpm import to_model_range

DIRECTIONS = {"raw2rgb": ("rgb", "raw"), "rgb2raw": ("raw", "rgb")}  # (target, condition)
ESTIMATORS = ("upi", "regression")
# DiffRAW's Fig. 3 ablation: which conditions the network sees besides m_t (w: the input
# image, c: the colour-position condition).
CONDITIONS = {"w+c": ("w", "c"), "w": ("w",), "none": ()}
COLORS = ("x", "upi")  # the test-time c: the estimate x itself (the paper), or UPI's
PROFILES = ("auto", "camera", "mean", "synthetic", "manifest")


def _bad(key, value, expected):
  return ConfigError(f"bad value for config key '{key}': {value!r} (expected {expected})")


def camera_profile_mode(config) -> bool:
  """Whether the UPI estimator uses the target camera's own features (`dtdm.upi_profile`
  "camera", or "auto" with real data: data.dir set or data.source 'mixed')."""
  profile = config.dtdm.upi_profile
  if profile not in PROFILES:
    raise _bad("dtdm.upi_profile", profile, " / ".join(PROFILES))
  real = bool(config.data.get("dir")) or config.data.get("source") == "mixed"
  return profile == "camera" or (profile == "auto" and real)


def upi_cam2rgb(config, camera) -> np.ndarray:
  """camera -> sRGB matrix of the UPI estimators (`dtdm.upi_profile`): the training data's
  camera (`camera`, a CameraProfile resolved by the caller), UPI's mean camera, or the
  synthetic source's exact matrix (an oracle profile)."""
  profile = config.dtdm.upi_profile
  if profile not in PROFILES:
    raise _bad("dtdm.upi_profile", profile, " / ".join(PROFILES))
  if profile == "auto":
    profile = "manifest" if camera is not None else "mean"
  if profile == "mean":
    return upi.mean_cam2rgb()
  if profile == "synthetic":
    return np.asarray(SYNTHETIC_CAM2RGB, np.float64)
  if camera is None:
    raise ConfigError("config key 'dtdm.upi_profile'='manifest' needs data.dir (a prepared "
                      "folder whose manifest holds the camera profile)")
  return camera.cam2rgb()


class DTDMTask(Task):
  name = "dtdm"

  @classmethod
  def requirements(cls, config):
    d = config.dtdm
    runs = {"estimator": d.estimator_workdir} if (
        d.estimator == "regression" and d.estimator_workdir) else {}
    camera = d.upi_profile in ("auto", "camera", "manifest") and bool(config.data.get("dir"))
    return Requirements(runs=runs, camera=camera)

  @classmethod
  def batch_camera(cls, config) -> bool:
    """rgb2raw training computes its estimate from each patch's camera (camera mode)."""
    return config.dtdm.direction == "rgb2raw" and camera_profile_mode(config)

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    d = config.dtdm
    if d.direction not in DIRECTIONS:
      raise _bad("dtdm.direction", d.direction, "'raw2rgb' or 'rgb2raw'")
    if d.process not in ("dtdm", "ddpm"):
      raise _bad("dtdm.process", d.process, "'dtdm' or 'ddpm'")
    if d.estimator not in ESTIMATORS:
      raise _bad("dtdm.estimator", d.estimator, "'upi' or 'regression'")
    if d.ddpm_start not in ("estimate", "noise"):
      raise _bad("dtdm.ddpm_start", d.ddpm_start, "'estimate' or 'noise'")
    condition = d.get("condition", "w+c")
    if condition not in CONDITIONS:
      raise _bad("dtdm.condition", condition, " / ".join(CONDITIONS))
    self.slots = CONDITIONS[condition]
    self.color = d.get("color", "x")
    if self.color not in COLORS:
      raise _bad("dtdm.color", self.color, " / ".join(COLORS))
    if self.color != "x" and "c" not in self.slots:
      raise ConfigError(f"config key 'dtdm.color'={self.color!r} needs the c condition "
                        f"(dtdm.condition='w+c'), got {condition!r}")
    want = 3 * (1 + len(self.slots))
    if config.model.in_channels != want or config.model.out_channels != 3:
      raise ConfigError(f"DTDM's network sees concat[m_t, {', '.join(self.slots) or 'nothing'}] "
                        f"(dtdm.condition={condition!r}): config keys 'model.in_channels' must "
                        f"be {want} and 'model.out_channels' 3")
    self.direction = d.direction
    self.process = d.process
    self.target_key, self.cond_key = DIRECTIONS[d.direction]
    self.schedule = schedules.make_schedule(config.diffusion)
    try:
      self.s = dtdm.check_s(self.schedule, d.s)
    except ValueError as e:
      raise ConfigError(f"bad value for config key 'dtdm.s': {e}") from None
    self.eta = float(d.eta)
    try:
      self.prediction = dtdm.check_prediction(d.get("prediction", "f"))
    except ValueError:
      raise _bad("dtdm.prediction", d.get("prediction"), " / ".join(dtdm.PREDICTIONS)) from None
    if self.prediction != "f" and self.process != "dtdm":
      raise ConfigError(f"config key 'dtdm.prediction'={self.prediction!r} is DTDM's "
                        f"(dtdm.process='dtdm'); the DDPM arms predict epsilon")
    self.model = unet.from_config(config.model, cpu_conv.library(config, "train"))
    self.patch = config.data.patch_size
    try:
      self.degrade_params = degrade.params_from_config(d.get("degrade"))
    except ValueError as e:
      raise ConfigError(f"config block 'dtdm.degrade': {e}") from None
    self.protocol = config.data.get("protocol", "invisp")
    self.camera_mode = camera_profile_mode(config)
    self.upi_tone = prior_lib.check_tone(d.get("upi_tone", "upi"), "dtdm.upi_tone")
    self._g_camera = False
    self._estimate = self._make_estimator()
    self._color = self._upi_estimator() if self.color == "upi" else None

  def _upi_estimator(self):
    """UPI's forward (raw2rgb) or inverse (rgb2raw): f(c, camera=None) with the camera's
    features (camera mode; None: the training camera, else the synthetic source's or UPI's
    average camera, jisp.isp.prior.default_profile) or the run's one fixed profile."""
    if self.camera_mode:
      fallback = prior_lib.features(prior_lib.default_profile(self.config, self.inputs.camera))
      return lambda c, camera=None: prior_lib.estimate(
          self.direction, c, fallback if camera is None else camera, self.protocol,
          self.upi_tone)
    cam = upi.camera_params(upi_cam2rgb(self.config, self.inputs.camera))
    if self.direction == "raw2rgb":
      fwd = lambda c: upi.raw_to_rgb(c, cam, self.protocol, self.upi_tone)
    else:
      fwd = lambda c: upi.rgb_to_raw(c, cam, self.protocol, tone_model=self.upi_tone)
    return lambda c, camera=None: jnp.clip(fwd(c), 0.0, 1.0)

  def _make_estimator(self):
    """The test-time x = estimator(condition), [0, 1] -> [0, 1]; None for a raw2rgb run
    trained without its G (training uses D^2(y); predict then says G is missing)."""
    d = self.config.dtdm
    if d.estimator == "regression":
      if "estimator" not in self.inputs.runs:
        if self.direction == "rgb2raw" or d.estimator_workdir:
          raise ConfigError("config key 'dtdm.estimator_workdir' must name a trained "
                            "regression run when dtdm.estimator='regression'")
        return None
      g_task, g_params = self.inputs.runs["estimator"]
      if g_task.name != "regression" or g_task.direction != self.direction:
        raise ConfigError(f"dtdm.estimator_workdir: a regression run of direction "
                          f"{self.direction!r} is needed, got task {g_task.name!r} "
                          f"{getattr(g_task, 'direction', '')!r}")
      g_params = jax.device_get(g_params)  # constants inside jit, whatever the mesh
      if g_task.io.camera:  # G takes the camera itself (its prior.mode)
        self._g_camera = True
        return lambda c, camera=None: g_task.predict(g_params, c, None, DETERMINISTIC,
                                                     camera=camera)
      return lambda c, camera=None: jnp.clip(g_task.apply(g_params, c), 0.0, 1.0)
    return self._upi_estimator()

  # -- estimates ------------------------------------------------------------------
  def estimate(self, cond, camera=None):
    """x in [0, 1] for a condition batch, as used at test time; camera: the target camera's
    features with a batch axis (camera mode, or a G that takes them; None: the default)."""
    if self._estimate is None:
      raise OptionError("this raw2rgb DTDM run has no colour network G: set "
                        "dtdm.estimator_workdir to a trained regression_raw2rgb run, or "
                        "dtdm.estimator=upi")
    return self._estimate(jnp.asarray(cond, jnp.float32), camera)

  def train_estimate(self, batch, rng):
    """x at training time: D^2(y) for raw2rgb (the paper), the estimator for rgb2raw (with
    each patch's camera when the batch carries it)."""
    if self.direction == "raw2rgb":
      return degrade.degrade(rng, batch[self.target_key], self.degrade_params)
    return self.estimate(batch[self.cond_key], prior_lib.from_batch(batch))

  # -- protocol ---------------------------------------------------------------------
  @property
  def io(self):
    upi_used = self.config.dtdm.estimator == "upi" or self.color == "upi"
    cam = (self.camera_mode and upi_used) or self._g_camera
    return IOSpec(source=self.cond_key, target=self.target_key, in_channels=3,
                  out_channels=3, patch=self.patch, direction=self.direction,
                  conditions=(self.cond_key, "estimate") + (("camera",) if cam else ()),
                  noise_channels=3, camera=cam)

  def batch_spec(self, batch_size):
    p = self.patch
    spec = {k: jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32) for k in ("rgb", "raw")}
    if self.batch_camera(self.config):
      spec.update(prior_lib.feature_spec(batch_size))
    return spec

  def init_params(self, rng):
    p = self.patch
    return self.model.init(rng, jnp.zeros((1, p, p, self.config.model.in_channels),
                                          jnp.float32), jnp.ones((1,), jnp.float32))["params"]

  def conditions(self, w, c):
    """The network's condition channels after m_t: concat of the slots the config keeps."""
    parts = [{"w": w, "c": c}[k] for k in self.slots]
    return jnp.concatenate(parts, axis=-1) if parts else w[..., :0]

  def net_fn(self, params, w, c, train=False, rng=None, net_chunk=None):
    """f(m, t) with the conditions w and c (model range) closed over; net_chunk evaluates
    the network that many patches at a time (core.microbatch)."""
    rngs = {"dropout": rng} if (train and rng is not None) else None
    apply = microbatch.microbatched(
        lambda inp, t: self.model.apply({"params": params}, inp, t, train=train, rngs=rngs),
        net_chunk)
    cond = self.conditions(w, c)
    return lambda m, t: apply(jnp.concatenate([m, cond], axis=-1), t)

  def draws(self, rng, batch):
    # The estimate x is network-free, so it is made with the draws for the whole batch.
    if float(self.config.model.get("dropout", 0.0)):
      return None
    _, x_rng, l_rng = jax.random.split(rng, 3)
    y = batch[self.target_key]
    d = (dtdm.draw(l_rng, y.shape, self.s) if self.process == "dtdm" else
         losses.draw(l_rng, y.shape, self.schedule.num_timesteps))
    return dict(d, x01=self.train_estimate(batch, x_rng))

  def _loss_terms(self, params, batch, rng, train, draws=None):
    d_rng, x_rng, l_rng = jax.random.split(rng, 3)
    if draws is not None:
      draws = dict(draws)
      x01 = jax.lax.stop_gradient(draws.pop("x01"))
    else:
      x01 = jax.lax.stop_gradient(self.train_estimate(batch, x_rng))
    y = to_model_range(batch[self.target_key])
    w = to_model_range(batch[self.cond_key])
    x = to_model_range(x01)
    # Both loss helpers call the net on concat[state, cond]: the network input order
    # [m_t, w, c] that `net_fn` uses when sampling. Training has c = x (the paper).
    f_cat = lambda inp, t: self.model.apply(
        {"params": params}, inp, t, train=train,
        rngs={"dropout": d_rng} if train else None)
    cond = self.conditions(w, x)
    if self.process == "dtdm" and self.prediction == "residual":
      value = dtdm.residual_loss(f_cat, self.schedule, self.s, x, y, cond, l_rng, draws)
    elif self.process == "dtdm":
      value = dtdm.loss(f_cat, self.schedule, self.s, x, y, cond, l_rng, draws)
    else:
      value = losses.conditional_eps_loss(f_cat, self.schedule, y, cond, l_rng, draws)
    return value, x01

  def loss(self, params, batch, rng, train=True, draws=None):
    value, _ = self._loss_terms(params, batch, rng, train, draws)
    return value, {}

  def eval_metrics(self, params, batch, rng):
    value, x01 = self._loss_terms(params, batch, rng, False)
    return {"loss": value, "x_psnr": metrics.batch_psnr(x01, batch[self.target_key])}

  # -- sampling ---------------------------------------------------------------------
  def _clip_dtdm(self, f_fn):
    """f with the y_hat it implies (Eq. 21) clipped to [-1, 1]: f + (A/S)(y_hat - clip)."""
    A = jnp.asarray(self.schedule.sqrt_alpha_bars, jnp.float32)
    S = jnp.asarray(self.schedule.sqrt_one_minus_alpha_bars, jnp.float32)

    def wrapped(m, t):
      f = f_fn(m, t)
      ti = jnp.round(t).astype(jnp.int32)
      sh = (-1,) + (1,) * (m.ndim - 1)
      a, s = A[ti].reshape(sh), S[ti].reshape(sh)
      y_hat = (m - s * f) / a
      return f + (a / s) * (y_hat - jnp.clip(y_hat, -1.0, 1.0))
    return wrapped

  def _f_of_residual(self, r_fn, x, clip):
    """The f (Eq. 21) that the y_hat = x + r of a residual network implies; clip keeps that
    y_hat in [-1, 1]."""
    def f(m, t):
      y_hat = x + r_fn(m, t)
      y_hat = jnp.clip(y_hat, -1.0, 1.0) if clip else y_hat
      return dtdm.f_of(self.schedule, m, y_hat, jnp.round(t).astype(jnp.int32))
    return f

  def sample_model_range(self, params, w, x, rng, options, noise=None, c=None):
    """y_hat in model range from condition w and estimate x (both model range); c: the
    colour-position condition (default x, the paper).

    noise: the start noise eps (N(0, I), shape of x): m_s = sqrt(ab_s) x + sqrt(1-ab_s) eps
    for DTDM and DDPM-from-estimate, x_T = eps for DDPM-from-noise; drawn from rng if None.
    options.clip_x0 keeps the clean-image prediction of every network call in [-1, 1] (Ho
    et al.'s clip_denoised; for DTDM the y_hat of Eq. 21); Algorithm 2 as printed has no
    clipping.
    """
    f = self.net_fn(params, w, x if c is None else c, net_chunk=options.net_chunk)
    T = self.schedule.num_timesteps
    k0, k1 = jax.random.split(rng)
    eps = samplers.normal_like(k0, x) if noise is None else jnp.asarray(noise, x.dtype)
    steps = options.steps
    if self.process == "dtdm":
      if self.prediction == "residual":
        f = self._f_of_residual(f, x, bool(options.clip_x0))
      elif options.clip_x0:
        f = self._clip_dtdm(f)
      t0 = self.s if options.start_step is None else int(options.start_step)
      m_0 = dtdm.start_state(self.schedule, t0, x, eps)
      return dtdm.sample(f, self.schedule, self.s, x, k1, num_steps=steps, m_init=m_0,
                         eta=self.eta if options.eta is None else options.eta,
                         start_step=None if options.start_step is None else t0)
    f = samplers.clip_denoised(f, self.schedule) if options.clip_x0 else f
    if options.start == "estimate":
      t0, state = self.s, dtdm.start_state(self.schedule, self.s, x, eps)
    else:
      t0, state = T, eps
    if steps == t0:
      return samplers.ddpm_sample(f, self.schedule, state, k1, start_step=t0)
    # Fewer steps than timesteps: DDIM with eta=1 is ancestral DDPM on a strided grid.
    return samplers.ddim_sample(f, self.schedule, state, k1, num_steps=int(steps), eta=1.0,
                                start_step=t0)

  def default_options(self):
    return PredictOptions(sampler=self.process, start=self.config.dtdm.ddpm_start
                          if self.process == "ddpm" else None)

  def resolve_options(self, options=None):
    """sampler: "dtdm" ("ddpm" also for the DDPM arms); steps: network calls (default s;
    all T for DDPM from noise; fewer = strided); eta: DTDM's noise scale; start: DDPM arms
    only ("estimate" / "noise")."""
    o = options or PredictOptions()
    solver = {k: getattr(o, k) for k in ("variance", "spacing", "order", "skip",
                                         "denoise_to_zero")}
    if any(v is not None for v in solver.values()):
      raise OptionError(f"{', '.join(k for k, v in solver.items() if v is not None)}: "
                        "settings of the DDPM task's samplers, not of DTDM")
    ok = ("dtdm",) if self.process == "dtdm" else ("dtdm", "ddpm")
    if o.sampler not in (None,) + ok:
      # DTDM has its own reverse process; the DDPM arms run ancestral DDPM.
      raise OptionError(f"a {self.process} run samples with sampler "
                        f"{' or '.join(repr(n) for n in ok)}, not {o.sampler!r}")
    if self.process == "dtdm":
      if o.start is not None:
        raise OptionError("start is an option of DTDM's plain-DDPM arms (dtdm.process=ddpm)")
      start, t0 = None, self.s
      if o.start_step is not None:  # DiffRAW's test protocol: x_93 of an s = 100 model
        if not 1 <= int(o.start_step) <= self.s:
          raise OptionError(f"start_step must be in 1..s={self.s}, got {o.start_step}")
        t0 = int(o.start_step)
    elif o.start_step is not None:
      raise OptionError("start_step applies to DTDM runs (dtdm.process=dtdm), not to its "
                        "DDPM arms")
    else:
      start = o.start or self.config.dtdm.ddpm_start
      if start not in ("estimate", "noise"):
        raise OptionError(f"start must be 'estimate' or 'noise', got {start!r}")
      t0 = self.s if start == "estimate" else self.schedule.num_timesteps
    steps = t0 if o.steps is None else int(o.steps)
    if not 1 <= steps <= t0:
      raise OptionError(f"steps must be in 1..{t0} for this run, got {o.steps}")
    if o.eta is not None and not o.eta >= 0:
      raise OptionError(f"eta must be >= 0, got {o.eta}")
    clip = bool(self.config.get("sampling", {}).get("clip_x0", True)) if o.clip_x0 is None \
        else bool(o.clip_x0)
    return o.replace(sampler=self.process, steps=steps, start=start, clip_x0=clip)

  def nfe(self, options):
    return int(options.steps)

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """y_hat in [0, 1] for condition patches (B, P, P, 3) in [0, 1] (the RAW for raw2rgb,
    the sRGB for rgb2raw); x = the estimator's output on them (G(w) for raw2rgb)."""
    cond01 = jnp.asarray(inputs, jnp.float32)
    x01 = self.estimate(cond01, camera)
    c = None if self._color is None else to_model_range(self._color(cond01, camera))
    out = self.sample_model_range(params, to_model_range(cond01), to_model_range(x01), rng,
                                  options, noise, c)
    return jnp.clip(out * 0.5 + 0.5, 0.0, 1.0)

  def network(self, params):
    p = self.patch
    x = jax.ShapeDtypeStruct((1, p, p, self.config.model.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return (lambda prm, xx, tt: self.model.apply({"params": prm}, xx, tt, train=False),
            (params, x, t))
