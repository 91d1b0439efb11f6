"""DTDM through the task: an exact network plugged into the task's own network call.

The world: given the condition w and the estimate x (model range), the target is
y ~ N(mu(w, x), SD^2) per pixel with mu asymmetric in w and x. The Bayes-optimal DTDM
network reads m_t, w and x from its input slots (the order [m_t, w, x] of training) and
returns E[gamma_s (x - y) + eps | m_t] in closed form; with SD = 0 it is the exact-target
network (y_hat = y at every call). Every reverse step is then affine per pixel, so the law
of the task's output is known exactly from the plan's coefficients, and a wrong wiring of
x (into the condition slot, into lambda_t x, into the start m_s) moves it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp import tasks
from jisp.core.config import load
from jisp.diffusion import dtdm
from jisp.tasks.base import PredictOptions

CONFIGS = {"rgb2raw": "configs/dtdm_rgb2raw_tiny.py", "raw2rgb": "configs/dtdm_raw2rgb_tiny.py"}


def mu_of(w, x, scale=0.5):
  return scale * x - 0.3 * w + 0.1


class OracleNet:
  """Stands in for the U-Net: `apply(variables, inp, t, ...)` as the task calls it."""

  def __init__(self, schedule, s, sd, scale=0.5, prediction="f"):
    self.prediction = prediction
    self.A = jnp.asarray(schedule.sqrt_alpha_bars, jnp.float32)
    self.S = jnp.asarray(schedule.sqrt_one_minus_alpha_bars, jnp.float32)
    self.g = dtdm.gamma_s(schedule, s)
    self.sd, self.scale = sd, scale

  def apply(self, variables, inp, t, train=False, rngs=None):
    del variables, train, rngs
    m, w, x = inp[..., :3], inp[..., 3:6], inp[..., 6:9]
    ti = jnp.round(t).astype(jnp.int32)
    sh = (-1,) + (1,) * (m.ndim - 1)
    A, S = self.A[ti].reshape(sh), self.S[ti].reshape(sh)
    # m_t = k y + c x + S eps, k = A - S gamma_s, c = S gamma_s; y ~ N(mu, sd^2)
    k, c = A - S * self.g, S * self.g
    mu = mu_of(w, x, self.scale)
    e_y = mu + k * self.sd ** 2 / (k * k * self.sd ** 2 + S * S) * (m - k * mu - c * x)
    # the residual network's Bayes output is E[y | m_t] over the estimate in its x slot
    return e_y - x if self.prediction == "residual" else (m - A * e_y) / S


@functools.lru_cache(maxsize=None)
def make_task(direction, sd, scale=0.5, prediction="f"):
  task = tasks.get_task(load(f"{CONFIGS[direction]}:prediction={prediction}"))
  task.model = OracleNet(task.schedule, task.s, sd, scale, prediction)
  return task


@functools.lru_cache(maxsize=None)
def inputs(direction, n=8, p=32, seed=0):
  """(condition in [0, 1], w, x) with w, x in model range; x is the task's estimate."""
  cond01 = jax.random.uniform(jax.random.key(seed), (n, p, p, 3))
  x01 = jax.jit(make_task(direction, 0.0).estimate)(cond01)
  return cond01, cond01 * 2 - 1, x01 * 2 - 1


def predict(task, *args):
  return jax.jit(task.predict, static_argnums=3)(*args)


def sample_model_range(task, *args):
  return jax.jit(task.sample_model_range, static_argnums=4)(*args)


def exact_law(task, w, x, sd, steps, eta, scale=0.5):
  """Per-pixel mean and (scalar) variance of the chain's y_hat: m_s = A_s x + S_s eps,
  then m <- c_m m + c_f f(m) + c_x x + sigma z with f(m) = a_f m + b_f (float64)."""
  sch, s = task.schedule, task.s
  ab = sch.alpha_bars
  g = dtdm.gamma_s(sch, s)
  w, x = np.asarray(w, np.float64), np.asarray(x, np.float64)
  mu = mu_of(w, x, scale)
  p = dtdm.plan(sch, s, num_steps=steps, eta=eta)
  mean, var = np.sqrt(ab[s]) * x, 1 - ab[s]
  for t, c_m, c_f, c_x, sig in zip(p.t.astype(int), p.c_m, p.c_f, p.c_x, p.sigma):
    A, S = np.sqrt(ab[t]), np.sqrt(1 - ab[t])
    k, c = A - S * g, S * g
    G = k * sd ** 2 / (k * k * sd ** 2 + S * S)
    a_f = (1 - A * G) / S
    b_f = -A * (mu - G * k * mu - G * c * x) / S
    mean = (c_m + c_f * a_f) * mean + c_f * b_f + c_x * x
    var = (c_m + c_f * a_f) ** 2 * var + sig ** 2
  return mean, var


@pytest.mark.parametrize("direction,eta,prediction", [
    ("rgb2raw", 1.0, "f"), ("rgb2raw", 0.0, "f"), ("raw2rgb", 1.0, "f"),
    ("rgb2raw", 1.0, "residual"), ("rgb2raw", 0.0, "residual")])
def test_predict_with_the_bayes_network_has_the_exact_chain_law(direction, eta, prediction):
  """eta = 1 sees lambda_t x (a wrong x there moves the mean or the spread by many
  standard errors); eta = 0 has lambda_t = 0 and sees the start m_s; both see the input
  slots. A residual network (dtdm.prediction=residual) with the same Bayes y_hat must give
  the same law: its y_hat = x + r is read as the f it implies. Tolerance: 5 standard
  errors over all pixels of the standardized output."""
  sd = 0.05
  task = make_task(direction, sd, prediction=prediction)
  cond01, w, x = inputs(direction)
  opts = task.resolve_options(PredictOptions(clip_x0=False, eta=eta))
  out = np.asarray(predict(task, {}, cond01, jax.random.key(3), opts), np.float64) * 2 - 1
  assert 0 < out.min() + 1 and out.max() < 1  # nothing touched by predict's final clip
  mean, var = exact_law(task, w, x, sd, opts.steps, eta)
  r = (out - mean) / np.sqrt(var)
  n = r.size
  assert abs(r.mean()) < 5 / np.sqrt(n), r.mean()
  assert abs(r.var() - 1) < 5 * np.sqrt(2 / n), r.var()
  # The chain law is close to the world's law N(mu, sd^2) (DTDM's own discretization).
  np.testing.assert_allclose(mean, mu_of(np.asarray(w), np.asarray(x)), atol=0.02)
  assert 0.85 * sd ** 2 < var < 1.05 * sd ** 2, var / sd ** 2


@pytest.mark.parametrize("steps,prediction", [(None, "f"), (7, "f"), (7, "residual")])
def test_exact_target_network_returns_mu_of_the_slots_exactly(steps, prediction):
  """SD = 0: y_hat = mu(w, x) at every call, so the output is mu to float precision,
  whatever the noise; a swapped or mis-scaled slot changes it per pixel."""
  task = make_task("rgb2raw", 0.0, prediction=prediction)
  _, w, x = inputs("rgb2raw")
  opts = task.resolve_options(PredictOptions(clip_x0=False, steps=steps))
  out = sample_model_range(task, {}, w, x, jax.random.key(5), opts)
  np.testing.assert_allclose(out, mu_of(w, x), atol=2e-5)


def test_clip_x0_clips_dtdm_y_hat_at_every_network_call():
  """clip_x0 wraps the network so that the y_hat of Eq. 21 it implies is clip(y_hat):
  checked on the wrapper at several t, and end to end in model range (where predict's own
  final [0, 1] clip cannot stand in for it) with a world whose mu leaves [-1, 1]."""
  task = make_task("rgb2raw", 0.0, scale=3.0)
  _, w, x = inputs("rgb2raw")
  mu = np.asarray(mu_of(w, x, 3.0))
  assert np.mean(np.abs(mu) > 1) > 0.05

  @jax.jit
  def y_hats(t, noise):  # y_hat (Eq. 21) of the plain and the clipped network at m_t
    f = task.net_fn({}, w, x)
    tt = jnp.full((w.shape[0],), t, jnp.float32)
    m = x + 0.3 * noise  # the oracle's y_hat is mu from any state
    return [dtdm.predict_y(task.schedule, m, fn(m, tt), tt.astype(jnp.int32))
            for fn in (f, task._clip_dtdm(f))]
  for t in (1, 37, 100):
    plain, clipped = y_hats(t, jax.random.normal(jax.random.key(t), x.shape))
    np.testing.assert_allclose(plain, mu, atol=1e-4)
    np.testing.assert_allclose(clipped, np.clip(mu, -1, 1), atol=1e-4)
  for clip in (False, True):
    opts = task.resolve_options(PredictOptions(clip_x0=clip))
    out = np.asarray(sample_model_range(task, {}, w, x, jax.random.key(5), opts))
    np.testing.assert_allclose(out, np.clip(mu, -1, 1) if clip else mu, atol=2e-5)


def test_clip_x0_clips_a_residual_networks_y_hat():
  """prediction=residual: clip_x0 clips y_hat = x + r itself, end to end in model range."""
  task = make_task("rgb2raw", 0.0, scale=3.0, prediction="residual")
  _, w, x = inputs("rgb2raw")
  mu = np.asarray(mu_of(w, x, 3.0))
  for clip in (False, True):
    opts = task.resolve_options(PredictOptions(clip_x0=clip, steps=7))
    out = np.asarray(sample_model_range(task, {}, w, x, jax.random.key(5), opts))
    np.testing.assert_allclose(out, np.clip(mu, -1, 1) if clip else mu, atol=2e-5)
