"""Optimiser and learning-rate schedule from the `optim` config block."""
from __future__ import annotations

import optax

from jisp.core.errors import ConfigError


def make_lr_schedule(ocfg, num_steps: int):
  if ocfg.schedule == "warmup_cosine":
    # Warm up linearly from 0 to peak, then cosine down to end_lr at num_steps.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=ocfg.peak_lr, warmup_steps=ocfg.warmup_steps,
        decay_steps=max(num_steps, ocfg.warmup_steps + 1), end_value=ocfg.end_lr)
  if ocfg.schedule == "constant":
    return optax.constant_schedule(ocfg.peak_lr)
  if ocfg.schedule == "warmup_constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, ocfg.peak_lr, ocfg.warmup_steps),
         optax.constant_schedule(ocfg.peak_lr)], [ocfg.warmup_steps])
  if ocfg.schedule == "constant_cosine":
    # SSDNet (Restormer's schedule): constant, then a cosine to end_lr over cosine_steps.
    peak = ocfg.peak_lr
    return optax.join_schedules(
        [optax.constant_schedule(peak),
         optax.cosine_decay_schedule(peak, int(ocfg.cosine_steps), alpha=ocfg.end_lr / peak)],
        [int(ocfg.constant_steps)])
  if ocfg.schedule == "piecewise_constant":
    # torch's MultiStepLR (the official InvISP schedule): multiply at each milestone.
    return optax.piecewise_constant_schedule(
        ocfg.peak_lr, {int(m): float(ocfg.milestone_factor) for m in ocfg.milestones})
  raise ConfigError(f"bad value for config key 'optim.schedule': {ocfg.schedule!r} "
                    "(warmup_cosine, constant, warmup_constant, piecewise_constant)")


def make_optimizer(ocfg, num_steps: int):
  """Returns (GradientTransformation, lr_schedule)."""
  lr = make_lr_schedule(ocfg, num_steps)
  eps = float(ocfg.get("eps", 1e-8))
  if ocfg.name == "adam":
    opt = optax.adam(lr, b1=ocfg.b1, b2=ocfg.b2, eps=eps)
  elif ocfg.name == "adamw":
    opt = optax.adamw(lr, b1=ocfg.b1, b2=ocfg.b2, eps=eps, weight_decay=ocfg.weight_decay)
  else:
    raise ConfigError(f"bad value for config key 'optim.name': {ocfg.name!r} (adam, adamw)")
  chain = []
  if ocfg.grad_clip_norm and ocfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(ocfg.grad_clip_norm))
  chain.append(opt)
  return optax.chain(*chain), lr
