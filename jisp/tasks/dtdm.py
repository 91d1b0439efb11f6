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

Network: the jisp U-Net on concat[m_t, condition, x] (9 channels) and t (c = x, so the
colour-position condition is the estimate itself, as in the paper). Data live in [0, 1];
the diffusion runs in [-1, 1].

`config.dtdm.process`:
  dtdm  the DTDM loss (t ~ U{1..s}) and sampler (s steps from x_s; fewer = strided).
  ddpm  the ablation baseline with the same network, inputs and data: the plain
        epsilon-loss over t ~ U{1..T}; sampling per `dtdm.ddpm_start`: "estimate" starts
        plain DDPM from the noised estimate x_s = sqrt(ab_s) x + sqrt(1-ab_s) eps and runs s
        steps (SDEdit-like), "noise" starts from pure noise and runs all T steps.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jisp.config_utils import ConfigError
from jisp.diffusion import dtdm, losses, samplers, schedules
from jisp.isp import degrade, tone, unprocess
from jisp.models import microbatch, unet
from jisp.tasks.ddpm import to_model_range
from jisp.tasks.regression import psnr

DIRECTIONS = {"raw2rgb": ("rgb", "raw"), "rgb2raw": ("raw", "rgb")}  # (target, condition)
ESTIMATORS = ("upi", "regression")
PROFILES = ("auto", "mean", "synthetic", "manifest")


def _bad(key, value, expected):
  return ConfigError(f"bad value for config key '{key}': {value!r} (expected {expected})")


# ---------------------------------------------------------------------------- estimators

def upi_mean_cam2rgb() -> np.ndarray:
  """camera -> linear sRGB of UPI's average camera (mean of its four XYZ->camera matrices)."""
  xyz2cam = np.mean(unprocess.XYZ2CAMS, axis=0)
  rgb2cam = xyz2cam @ unprocess.RGB2XYZ
  rgb2cam = rgb2cam / rgb2cam.sum(axis=1, keepdims=True)
  return np.linalg.inv(rgb2cam)


def _manifest_cam2rgb(data_dir: str, camera: str) -> np.ndarray:
  path = os.path.join(data_dir, "manifest.json")
  try:
    with open(path) as f:
      cams = json.load(f).get("cameras", {})
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: cannot read the camera profile ({e})") from None
  names = list(cams)
  if len(names) != 1:
    names = [n for n in names if camera and camera.lower() in n.lower()]
  if len(names) != 1:
    raise ConfigError(f"{path}: cannot pick one camera profile for data.camera={camera!r} "
                      f"(profiles: {sorted(cams)})")
  rgb_cam = cams[names[0]].get("rgb_cam")
  if rgb_cam is None:
    raise ConfigError(f"{path}: camera {names[0]!r} has no rgb_cam matrix")
  return np.asarray(rgb_cam, np.float64).reshape(3, 3)


def upi_camera(config) -> unprocess.CameraParams:
  """The camera profile of the UPI estimators: colour matrix only (invisp RAW is already
  white balanced, so the gains are 1; noise is not modelled)."""
  profile = config.dtdm.upi_profile
  if profile not in PROFILES:
    raise _bad("dtdm.upi_profile", profile, " / ".join(PROFILES))
  if profile == "auto":
    has_manifest = bool(config.data.dir) and os.path.isfile(
        os.path.join(config.data.dir, "manifest.json"))
    profile = "manifest" if has_manifest else "mean"
  if profile == "mean":
    cam2rgb = upi_mean_cam2rgb()
  elif profile == "synthetic":  # the exact matrix of jisp.data.synthetic (an oracle profile)
    from jisp.data import synthetic
    cam2rgb = np.asarray(synthetic._CAM2RGB, np.float64)
  else:
    if not config.data.dir:
      raise ConfigError("config key 'dtdm.upi_profile'='manifest' needs data.dir")
    cam2rgb = _manifest_cam2rgb(config.data.dir, config.data.camera)
  return unprocess.CameraParams(
      rgb2cam=jnp.asarray(np.linalg.inv(cam2rgb), jnp.float32),
      cam2rgb=jnp.asarray(cam2rgb, jnp.float32), wb_gains=jnp.ones((3,), jnp.float32),
      shot_noise=jnp.zeros(()), read_noise=jnp.zeros(()))


def upi_rgb2raw(rgb, cam):
  """sRGB -> invisp RAW (gamma-compressed, white-balanced camera RGB) by UPI's inverse."""
  return tone.gamma_compress(unprocess.unprocess(rgb, cam), 2.2)


def upi_raw2rgb(raw, cam):
  """invisp RAW -> sRGB by UPI's forward `process` (the no-learning colour extractor)."""
  return unprocess.process(tone.gamma_expand(raw, 2.2), cam)


def load_regression(workdir: str, direction: str):
  """inputs (B,H,W,3) in [0,1] -> prediction in [0,1], from a trained RegressionTask run.

  Params are pulled to host numpy: inside a jit they become constants, whatever the mesh.
  """
  from jisp.tasks.regression import RegressionTask
  from jisp.train import checkpoint
  import ml_collections
  if not workdir:
    raise ConfigError("config key 'dtdm.estimator_workdir' must name a trained regression run "
                      "when dtdm.estimator='regression'")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir}: no config.json here (not a `jisp train` run directory)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  if cfg.get("task") != "regression":
    raise ConfigError(f"{path}: task is {cfg.get('task')!r}, expected 'regression'")
  if cfg.regression.direction != direction:
    raise ConfigError(f"{path}: regression direction {cfg.regression.direction!r} does not "
                      f"match dtdm.direction {direction!r}")
  task = RegressionTask(cfg)
  _, params = checkpoint.restore_params(workdir, task)
  params = jax.device_get(params)
  return lambda inputs: jnp.clip(task.apply(params, inputs), 0.0, 1.0)


# ---------------------------------------------------------------------------- the task

class DTDMTask:
  name = "dtdm"

  def __init__(self, config):
    self.config = config
    d = config.dtdm
    if d.direction not in DIRECTIONS:
      raise _bad("dtdm.direction", d.direction, "'raw2rgb' or 'rgb2raw'")
    if d.process not in ("dtdm", "ddpm"):
      raise _bad("dtdm.process", d.process, "'dtdm' or 'ddpm'")
    if d.estimator not in ESTIMATORS:
      raise _bad("dtdm.estimator", d.estimator, "'upi' or 'regression'")
    if d.ddpm_start not in ("estimate", "noise"):
      raise _bad("dtdm.ddpm_start", d.ddpm_start, "'estimate' or 'noise'")
    if config.model.in_channels != 9 or config.model.out_channels != 3:
      raise ConfigError("DTDM's network sees concat[m_t, condition, x]: config keys "
                        "'model.in_channels' must be 9 and 'model.out_channels' 3")
    self.direction = d.direction
    self.process = d.process
    self.target_key, self.cond_key = DIRECTIONS[d.direction]
    self.schedule = schedules.make_schedule(config.diffusion)
    try:
      self.s = dtdm.check_s(self.schedule, d.s)
    except ValueError as e:
      raise ConfigError(f"bad value for config key 'dtdm.s': {e}") from None
    self.eta = float(d.eta)
    self.model = unet.from_config(config.model)
    self.patch = config.data.patch_size
    try:
      self.degrade_params = degrade.params_from_config(d.get("degrade"))
    except ValueError as e:
      raise ConfigError(f"config block 'dtdm.degrade': {e}") from None
    self._estimator = None
    self._fns = {}
    # Built now, outside any trace (restoring a checkpoint inside jit cannot work), and so
    # a bad estimator fails before compiling. The one exception: a raw2rgb run can train
    # without its G (training uses D^2(y)); predict then says the workdir is missing.
    if self.direction == "rgb2raw" or d.estimator != "regression" or d.estimator_workdir:
      self.estimator()

  # -- estimates ------------------------------------------------------------------
  def estimator(self):
    """The test-time x = estimator(condition) (G for raw2rgb), inputs/outputs in [0, 1]."""
    if self._estimator is None:
      d = self.config.dtdm
      if d.estimator == "regression":
        self._estimator = load_regression(d.estimator_workdir, self.direction)
      else:
        cam = upi_camera(self.config)
        fwd = upi_raw2rgb if self.direction == "raw2rgb" else upi_rgb2raw
        self._estimator = lambda c: jnp.clip(fwd(c, cam), 0.0, 1.0)
    return self._estimator

  def estimate(self, cond):
    """x in [0, 1] for a condition batch, as used at test time."""
    return self.estimator()(jnp.asarray(cond, jnp.float32))

  def train_estimate(self, batch, rng):
    """x at training time: D^2(y) for raw2rgb (the paper), the estimator for rgb2raw."""
    if self.direction == "raw2rgb":
      return degrade.degrade(rng, batch[self.target_key], self.degrade_params)
    return self.estimator()(batch[self.cond_key])

  # -- protocol ---------------------------------------------------------------------
  def batch_spec(self, batch_size):
    p = self.patch
    return {k: jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32) for k in ("rgb", "raw")}

  def init_params(self, rng):
    p = self.patch
    return self.model.init(rng, jnp.zeros((1, p, p, 9), jnp.float32),
                           jnp.ones((1,), jnp.float32))["params"]

  def net_fn(self, params, cond, x, train=False, rng=None, net_chunk=None):
    """f(m, t) with the condition and the estimate (model range) closed over; net_chunk
    evaluates the network that many patches at a time (models.microbatch)."""
    rngs = {"dropout": rng} if (train and rng is not None) else None
    apply = microbatch.microbatched(
        lambda inp, t: self.model.apply({"params": params}, inp, t, train=train, rngs=rngs),
        net_chunk)
    return lambda m, t: apply(jnp.concatenate([m, cond, x], axis=-1), t)

  def _loss_terms(self, params, batch, rng, train):
    d_rng, x_rng, l_rng = jax.random.split(rng, 3)
    x01 = jax.lax.stop_gradient(self.train_estimate(batch, x_rng))
    y = to_model_range(batch[self.target_key])
    w = to_model_range(batch[self.cond_key])
    x = to_model_range(x01)
    # Both loss helpers call the net on concat[state, cond]; cond = [w, x] gives the
    # network input order [m_t, w, x] that `net_fn` uses when sampling.
    f_cat = lambda inp, t: self.model.apply(
        {"params": params}, inp, t, train=train,
        rngs={"dropout": d_rng} if train else None)
    cond = jnp.concatenate([w, x], axis=-1)
    if self.process == "dtdm":
      value = dtdm.loss(f_cat, self.schedule, self.s, x, y, cond, l_rng)
    else:
      value = losses.conditional_eps_loss(f_cat, self.schedule, y, cond, l_rng)
    return value, x01

  def loss(self, params, batch, rng, train=True):
    value, _ = self._loss_terms(params, batch, rng, train)
    return value, {}

  def eval_metrics(self, params, batch, rng):
    value, x01 = self._loss_terms(params, batch, rng, False)
    return {"loss": value,
            "x_psnr": jnp.mean(psnr(x01, batch[self.target_key], axis=(1, 2, 3)))}

  # -- sampling ---------------------------------------------------------------------
  # The tiled reconstruct / eval tools (jisp.infer.predict) read these like DDPMTask's.
  raw_channels = 3   # channels of y_hat (whatever the direction)
  cond_channels = 3

  def _check_sampler(self, sampler):
    # DTDM has its own reverse process; the DDPM arms run ancestral DDPM. Refuse other
    # sampler names rather than silently ignore them.
    ok = (None, "dtdm") if self.process == "dtdm" else (None, "dtdm", "ddpm")
    if sampler not in ok:
      raise ValueError(f"{self.process} runs sample with sampler "
                       f"{' or '.join(repr(o) for o in ok if o)}, not {sampler!r}")

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

  def sample_model_range(self, params, w, x, rng, *, steps=None, eta=None, start=None,
                         x_init=None, clip_x0=True, net_chunk=None):
    """y_hat in model range from condition w and estimate x (both model range).

    x_init: the start noise eps (N(0, I), shape of x): m_s = sqrt(ab_s) x + sqrt(1-ab_s) eps
    for DTDM and DDPM-from-estimate, x_T = eps for DDPM-from-noise; drawn from rng if None.
    clip_x0 keeps the clean-image prediction of every network call in [-1, 1] (Ho et al.'s
    clip_denoised; for DTDM the y_hat of Eq. 21); Algorithm 2 as printed has no clipping.
    net_chunk: see `net_fn`.
    """
    f = self.net_fn(params, w, x, net_chunk=net_chunk)
    T = self.schedule.num_timesteps
    k0, k1 = jax.random.split(rng)
    eps = samplers._normal_like(k0, x) if x_init is None else jnp.asarray(x_init, x.dtype)
    if self.process == "dtdm":
      f = self._clip_dtdm(f) if clip_x0 else f
      m_s = dtdm.start_state(self.schedule, self.s, x, eps)
      return dtdm.sample(f, self.schedule, self.s, x, k1, num_steps=steps, m_init=m_s,
                         eta=self.eta if eta is None else eta)
    f = samplers.clip_denoised(f, self.schedule) if clip_x0 else f
    start = self.config.dtdm.ddpm_start if start is None else start
    if start == "estimate":
      t0, state = self.s, dtdm.start_state(self.schedule, self.s, x, eps)
    elif start == "noise":
      t0, state = T, eps
    else:
      raise ValueError(f"dtdm: start must be 'estimate' or 'noise', got {start!r}")
    if steps is None or int(steps) == t0:
      return samplers.ddpm_sample(f, self.schedule, state, k1, start_step=t0)
    # Fewer steps than timesteps: DDIM with eta=1 is ancestral DDPM on a strided grid.
    return samplers.ddim_sample(f, self.schedule, state, k1, num_steps=int(steps), eta=1.0,
                                start_step=t0)

  def nfe(self, *, steps=None, start=None, sampler=None, **kw) -> int:
    """Network evaluations of one `predict` call with these options."""
    del kw
    self._check_sampler(sampler)
    if steps is not None:
      return int(steps)
    if self.process == "ddpm" and (start or self.config.dtdm.ddpm_start) == "noise":
      return self.schedule.num_timesteps
    return self.s

  def predict(self, params, cond_patches, rng, *, steps=None, sampler=None, eta=None,
              start=None, x_init=None, clip_x0=True, net_chunk=None, **kw):
    """y_hat in [0, 1] for condition patches (B, P, P, 3) in [0, 1] (the RAW for raw2rgb,
    the sRGB for rgb2raw); x = the estimator's output on them (G(w) for raw2rgb).

    steps: network calls (default s; all T for DDPM from noise; fewer = strided).
    sampler: None or "dtdm" ("ddpm" also for the DDPM arms). eta: DTDM noise scale
    (default config). start: DDPM arms only ("estimate" / "noise"). x_init, clip_x0: see
    `sample_model_range`; net_chunk: see `net_fn`. Pure and jit-able (steps/eta/start/
    clip_x0/net_chunk static).
    """
    if kw:
      raise TypeError(f"DTDMTask.predict: unexpected options {sorted(kw)}")
    self._check_sampler(sampler)
    cond01 = jnp.asarray(cond_patches, jnp.float32)
    x01 = self.estimator()(cond01)
    out = self.sample_model_range(params, to_model_range(cond01), to_model_range(x01), rng,
                                  steps=steps, eta=eta, start=start, x_init=x_init,
                                  clip_x0=clip_x0, net_chunk=net_chunk)
    return jnp.clip(out * 0.5 + 0.5, 0.0, 1.0)

  def sampler_fn(self, *, steps=None, eta=None, start=None, clip_x0=True):
    """jax.jit of (params, cond01, rng) -> predict(...), cached per option set, so a caller
    can `.lower(...).compile()` it and time compile and run apart."""
    key = (steps, eta, start, clip_x0)
    if key not in self._fns:
      self.estimator()  # load G outside the trace
      self._fns[key] = jax.jit(lambda p, c, r: self.predict(
          p, c, r, steps=steps, eta=eta, start=start, clip_x0=clip_x0))
    return self._fns[key]
