"""SSDNet trained with soft supervision: sRGB -> RAW in one deterministic pass.

Batches hold "rgb" (B, P, P, 3) in [0, 1] and "raw" in [0, 1]: (B, P/2, P/2, 4) packed
RGGB (R, Gr, Gb, B) for model.output = "packed4" (the AIM protocol), (B, P, P, 3) for
"rgb3" (the InvISP / FiveK protocol).

Config `soft` block: strategy "train_resampling" (the paper's default: L1 to a resampled
target, alpha-weighted sigma term, the sigma head unused at test), "test_resampling"
(L1 to x_gt plus L1 of sigma to e_gt; at test optionally the mean of N draws of
mu + sigma z) or "plain" (clipped L1, no sigma head); alpha, clip_min, clip_max,
stop_grad_target, test_samples (jisp.losses.soft_supervision has the math).
`eval.self_ensemble`: average predict over the 8 dihedral transforms of the input.

`prior.mode` = "residual" (jisp.isp.prior; rgb3 output): mu = clip(UPI + r), UPI's
estimate with the target camera's metadata (each patch's camera features from the batch in
training, predict's camera at inference) plus the network's unclipped head output r, so an
all-zero network is exactly UPI. "input" / "both" are not offered: SSDNet's global skip
(y_r = y + r) needs its input to be the 3-channel sRGB.

Predict options: sampler "none" (default: mu), or sampler "resample" with steps = N draws
(default soft.test_samples) for a model that has a sigma head: clip(mean of N draws of
mu + sigma z), drawn as the one equivalent draw mu + sigma z / sqrt(N).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jisp.core import metrics, microbatch
from jisp.core.errors import ConfigError, OptionError
from jisp.isp import prior as prior_lib
from jisp.losses import soft_supervision as ss
from jisp.models import ssdnet
from jisp.tasks.base import IOSpec, PredictOptions, Requirements, Task

STRATEGIES = ("train_resampling", "test_resampling", "plain")
RESAMPLE = "resample"
DIHEDRAL_OPS = 8


def dihedral(x, op: int):
  """One of the 8 symmetries of the square on the spatial axes of (B, H, W, C): op % 4
  quarter turns after a vertical flip when op >= 4 (op 0 = identity)."""
  if op >= 4:
    x = jnp.flip(x, axis=1)
  return jnp.rot90(x, op % 4, axes=(1, 2))


def dihedral_inverse(x, op: int):
  x = jnp.rot90(x, -(op % 4), axes=(1, 2))
  return jnp.flip(x, axis=1) if op >= 4 else x


class ResidualSSDNet(ssdnet.SSDNet):
  """SSDNet with mu's head unclipped (the same parameters): the residual over the prior.
  zero_head: that head starts at zero, so the untrained network is the prior itself."""
  zero_head: bool = False

  def _head(self, x, name, h, w):
    if name != "out" or self.output != "rgb3":
      return super()._head(x, name, h, w)
    init = nn.initializers.zeros if self.zero_head else ssdnet.TORCH_KERNEL_INIT
    return ssdnet.conv(3, 3, name, dtype=self.dtype, kernel_init=init)(x)[
        :, :h, :w].astype(jnp.float32)


def _residual_model(model: ssdnet.SSDNet, zero_head: bool = False) -> ResidualSSDNet:
  kw = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")}
  return ResidualSSDNet(**kw, zero_head=zero_head)


def _check_soft(s):
  def bad(key, why):
    return ConfigError(f"bad value for config key 'soft.{key}': {s[key]!r} ({why})")
  if s.strategy not in STRATEGIES:
    raise bad("strategy", f"expected one of {', '.join(STRATEGIES)}")
  if not s.alpha >= 0:
    raise bad("alpha", "must be >= 0")
  if not 0 <= s.clip_min < s.clip_max:
    raise ConfigError(f"bad values for config keys 'soft.clip_min', 'soft.clip_max': "
                      f"{s.clip_min!r}, {s.clip_max!r} (need 0 <= clip_min < clip_max)")
  if int(s.test_samples) < 1:
    raise bad("test_samples", "must be >= 1")


class SSDNetTask(Task):
  name = "ssdnet"

  @classmethod
  def requirements(cls, config):
    return Requirements(camera=prior_lib.mode_of(config) != "none"
                        and bool(config.data.get("dir")))

  @classmethod
  def batch_camera(cls, config) -> bool:
    """Whether training batches carry each patch's camera features."""
    return prior_lib.mode_of(config) != "none"

  def __init__(self, config, inputs=None):
    super().__init__(config, inputs)
    self.model = ssdnet.from_config(config.model)
    self.prior = prior_lib.mode_of(config)
    if self.prior != "none":
      if self.prior != "residual" or self.model.output != "rgb3":
        raise ConfigError(f"config key 'prior.mode'={self.prior!r}: SSDNet takes the prior "
                          "as a residual base ('residual') with model.output='rgb3' only")
      self.protocol = prior_lib.check_protocol(config, self.prior)
      self.model = _residual_model(self.model, prior_lib.zero_init_of(config))
    self.prior_tone = prior_lib.tone_of(config)
    if self.prior == "none":
      prior_lib.refuse_zero_init(config, "the plain SSDNet (prior.mode=none)")
    self.default_features = prior_lib.features(
        prior_lib.default_profile(config, self.inputs.camera))
    self.soft = config.soft
    _check_soft(self.soft)
    self.strategy = self.soft.strategy
    self.has_sigma = self.strategy != "plain"
    self.packed = self.model.output == "packed4"
    self.patch = int(config.data.patch_size)
    if self.packed and self.patch % 2:
      raise ConfigError(f"bad value for config key 'data.patch_size': {self.patch} "
                        "(packed4 output needs an even patch)")
    ev = config.get("eval")
    self.self_ensemble = bool(ev.get("self_ensemble", False)) if ev is not None else False

  # ------------------------------------------------------------------ description
  @property
  def io(self):
    cam = self.prior != "none"
    return IOSpec(source="rgb", target="raw", in_channels=3,
                  out_channels=self.model.out_channels, patch=self.patch,
                  direction="rgb2raw", conditions=("rgb", "camera") if cam else ("rgb",),
                  out_scale=2 if self.packed else 1, camera=cam)

  def raw_shape(self, batch: int, patch: int) -> tuple[int, ...]:
    """Shape of the "raw" batch for sRGB patches of `patch` pixels."""
    return (batch, patch // 2, patch // 2, 4) if self.packed else (batch, patch, patch, 3)

  # ------------------------------------------------------------------ training
  def batch_spec(self, batch_size, patch=None):
    """One batch of `patch` (default data.patch_size) sRGB pixels: progressive training
    asks for each stage's patch."""
    p = int(patch or self.patch)
    spec = {"rgb": jax.ShapeDtypeStruct((batch_size, p, p, 3), jnp.float32),
            "raw": jax.ShapeDtypeStruct(self.raw_shape(batch_size, p), jnp.float32)}
    if self.prior != "none":
      spec.update(prior_lib.feature_spec(batch_size))
    return spec

  def init_params(self, rng):
    x = jnp.zeros((1, self.patch, self.patch, 3), jnp.float32)
    return self.model.init(rng, x, sigma=self.has_sigma)["params"]

  def apply(self, params, rgb, sigma: bool = False, camera=None):
    """{"mu", and "sigma" when asked} for sRGB (B, H, W, 3) in [0, 1]; both clipped.
    camera: the target camera's features with a batch axis (prior runs; None: the run's
    default camera)."""
    x = jnp.asarray(rgb, jnp.float32)
    out = self.model.apply({"params": params}, x, sigma=sigma)
    if self.prior == "none":
      return out
    base = prior_lib.rgb_to_raw(x, self.default_features if camera is None else camera,
                                self.protocol, tone_model=self.prior_tone)
    return dict(out, mu=jnp.clip(base + out["mu"], 0.0, 1.0))

  def draws(self, rng, batch):
    if self.strategy != "train_resampling":
      return {}
    return {"z": jax.random.normal(rng, batch["raw"].shape, jnp.float32)}

  def _loss(self, out, x_gt, rng, draws=None):
    """(loss, {"loss_mu": its mu term, "loss_sigma": its unweighted sigma term})."""
    s = self.soft
    clip = dict(clip_min=float(s.clip_min), clip_max=float(s.clip_max))
    if self.strategy == "plain":
      loss = ss.plain_loss(out["mu"], x_gt, **clip)
      return loss, {"loss_mu": loss}
    if self.strategy == "train_resampling":
      z = (jax.random.normal(rng, x_gt.shape, jnp.float32) if draws is None
           else draws["z"])
      loss, parts = ss.train_resampling_loss(out["mu"], out["sigma"], x_gt, z, float(s.alpha),
                                             stop_grad_target=bool(s.stop_grad_target), **clip)
    else:
      loss, parts = ss.test_resampling_loss(out["mu"], out["sigma"], x_gt,
                                            stop_grad_target=bool(s.stop_grad_target), **clip)
    return loss, {"loss_mu": parts["main"], "loss_sigma": parts["aux"]}

  def loss(self, params, batch, rng, train=True, draws=None):
    del train
    out = self.apply(params, batch["rgb"], sigma=self.has_sigma,
                     camera=prior_lib.from_batch(batch))
    loss, aux = self._loss(out, batch["raw"], rng, draws)
    aux["l1"] = jnp.mean(jnp.abs(out["mu"] - batch["raw"]))
    return loss, aux

  def eval_metrics(self, params, batch, rng):
    """loss and its terms, mu's L1 and PSNR; test-resampling models also the PSNR of the
    N-draw average (never better than mu's in expectation:
    before clipping it adds sum(sigma^2)/N to the squared error)."""
    x_gt = batch["raw"]
    loss_rng, draw_rng = jax.random.split(rng)
    out = self.apply(params, batch["rgb"], sigma=self.has_sigma,
                     camera=prior_lib.from_batch(batch))
    loss, aux = self._loss(out, x_gt, loss_rng)
    m = {"loss": loss, "l1": jnp.mean(jnp.abs(out["mu"] - x_gt)),
         "psnr": metrics.batch_psnr(out["mu"], x_gt)}
    m.update(aux)
    if self.strategy == "test_resampling":
      z = jax.random.normal(draw_rng, x_gt.shape, jnp.float32)
      avg = ss.resample_mean(out["mu"], out["sigma"], z, int(self.soft.test_samples))
      m["psnr_resampled"] = metrics.batch_psnr(avg, x_gt)
    return m

  # ------------------------------------------------------------------ inference
  def resolve_options(self, options=None):
    o = options or PredictOptions()
    if o.eta is not None or o.start is not None or o.start_step is not None:
      raise OptionError(f"task {self.name!r}: eta, start and start_step do not apply")
    if o.sampler in (None, "none"):
      if o.steps is not None:
        raise OptionError(f"task {self.name!r} predicts mu in one pass: steps applies only "
                          f"to sampler {RESAMPLE!r} (the number of draws averaged)")
      return o.replace(sampler="none")
    if o.sampler != RESAMPLE:
      raise OptionError(f"unknown sampler {o.sampler!r} for {self.name} (expected 'none' or "
                        f"{RESAMPLE!r})")
    if not self.has_sigma:
      raise OptionError(f"sampler {RESAMPLE!r} needs a sigma head; this model was trained "
                        "with soft.strategy='plain'")
    steps = int(self.soft.test_samples) if o.steps is None else int(o.steps)
    if steps < 1:
      raise OptionError(f"sampler {RESAMPLE!r} needs steps (draws) >= 1, got {steps}")
    return o.replace(steps=steps)

  def out_shape(self, in_shape) -> tuple[int, ...]:
    """predict's output shape for sRGB inputs of shape (B, H, W, 3)."""
    b, h, w = in_shape[:3]
    return (b, h // 2, w // 2, 4) if self.packed else (b, h, w, 3)

  def _predict_once(self, params, x, z, options, camera=None):
    if options.sampler != RESAMPLE:
      return self.apply(params, x, camera=camera)["mu"]
    out = self.apply(params, x, sigma=True, camera=camera)
    return ss.resample_mean(out["mu"], out["sigma"], z, int(options.steps))

  def _predict_chunked(self, params, x, z, options, camera=None):
    args = [x] + ([] if z is None else [z])
    if self.prior != "none":
      cam = prior_lib.batched(self.default_features if camera is None else camera, x.shape[0])
      args += [cam["rgb2cam"], cam["wb"]]

    def one(*a):
      zz = None if z is None else a[1]
      cc = {"rgb2cam": a[-2], "wb": a[-1]} if self.prior != "none" else None
      return self._predict_once(params, a[0], zz, options, cc)
    return microbatch.microbatched(one, options.net_chunk)(*args)

  def predict(self, params, inputs, rng, options, noise=None, camera=None):
    """RAW in [0, 1] for sRGB (B, P, P, 3): packed (B, P/2, P/2, 4) or (B, P, P, 3).

    sampler "none" needs no sigma params (training-resampling drops the head). noise:
    the z of sampler "resample", in the output's shape (drawn from rng when None; the
    self-ensemble then draws one z per transform)."""
    x = jnp.asarray(inputs, jnp.float32)
    resample = options.sampler == RESAMPLE

    def z_for(op):
      if not resample:
        return None
      if noise is not None:
        return dihedral(jnp.asarray(noise, jnp.float32), op)
      return jax.random.normal(jax.random.fold_in(rng, op),
                               self.out_shape(dihedral(x, op).shape), jnp.float32)

    if not self.self_ensemble:
      return self._predict_chunked(params, x, z_for(0), options, camera)
    total = 0.0
    for op in range(DIHEDRAL_OPS):
      y = self._predict_chunked(params, dihedral(x, op), z_for(op), options, camera)
      total = total + dihedral_inverse(y, op)
    return total / DIHEDRAL_OPS

  def default_camera(self):
    return prior_lib.default_profile(self.config) if self.prior != "none" else None

  def nfe(self, options):
    del options
    return DIHEDRAL_OPS if self.self_ensemble else 1

  def network(self, params):
    """mu's forward on one patch (sampler 'resample' also runs the sigma head)."""
    x = jax.ShapeDtypeStruct((1, self.patch, self.patch, 3), jnp.float32)
    return (lambda prm, xx: self.apply(prm, xx)["mu"]), (params, x)
