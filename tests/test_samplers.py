"""Samplers against exact answers: Gaussian data makes the optimal eps-predictor, the
marginals and the probability-flow ODE map closed-form (jisp.diffusion.gaussian_oracle)."""
import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jisp.diffusion import samplers, schedules
from jisp.diffusion.gaussian_oracle import GaussianOracle

SCH = schedules.linear(1000, 0.0015, 0.0195)
SHAPE = (2, 2, 1)  # one "image": 2x2 pixels, 1 channel -> 4 independent dimensions
MU = np.array([0.3, -0.5, 0.8, 0.0]).reshape(SHAPE)
S = np.array([0.1, 0.2, 0.35, 0.5]).reshape(SHAPE)  # s=0.1 is the stiff, hard dimension
ORC = GaussianOracle(SCH, MU, S)
N = 8192


@functools.lru_cache(maxsize=None)
def _jitted(name, kw):
  return jax.jit(lambda x, key: samplers.sample(name, ORC.eps, SCH, x, key, **dict(kw)))


def run(name, x, key=None, **kw):
  key = jax.random.key(7) if key is None else key
  return np.asarray(_jitted(name, tuple(sorted(kw.items())))(x, key), np.float64)


@functools.lru_cache(maxsize=None)
def x_at(t, n=N, seed=0):
  """Exact draw from the marginal of x_t (fixed seeds: common random numbers)."""
  return ORC.sample_marginal(jax.random.key(seed + t), t, n, SHAPE)


def moment_errors(y, t_end=0.0):
  """Max over dimensions of |mean - exact mean| and |var - exact var| at t_end."""
  m, sd = ORC.moments(t_end)
  return np.abs(y.mean(0) - m).max(), np.abs(y.var(0) - sd ** 2).max()


def ode_error(y, x, t_from, t_to=0.0):
  """RMS distance to the exact ODE solution from the same start (no sampling noise)."""
  return float(np.sqrt(np.mean((y - ORC.ode_map(np.asarray(x), t_from, t_to)) ** 2)))


# ------------------------------------------------------------------ continuous time

def test_continuous_time_matches_discrete_schedule():
  t = np.arange(1, 1001)
  np.testing.assert_allclose(samplers.continuous_alpha_bar(SCH, t), SCH.alpha_bars[1:],
                             rtol=1e-12)
  np.testing.assert_allclose(samplers.t_to_lambda(SCH, t[:-1]), SCH.lambdas[1:-1], rtol=1e-10)
  # piecewise linear in log alpha between the discrete points
  la = SCH.log_alpha
  np.testing.assert_allclose(samplers.continuous_log_alpha(SCH, 400.25),
                             0.75 * la[400] + 0.25 * la[401], rtol=1e-12)
  # the inverse map lambda -> t, including non-integer t
  ts = np.random.default_rng(0).uniform(1, 1000, 64)
  np.testing.assert_allclose(samplers.lambda_to_t(SCH, samplers.t_to_lambda(SCH, ts)), ts,
                             rtol=1e-9)
  # jnp path (the oracle uses it) agrees with numpy
  np.testing.assert_allclose(np.asarray(samplers.continuous_alpha_bar(SCH, jnp.asarray(ts,
                             jnp.float32))), samplers.continuous_alpha_bar(SCH, ts), rtol=2e-5)


def test_step_grids_and_orders():
  assert samplers.singlestep_orders(20, 3) == [3] * 6 + [2]  # the paper's 20-NFE setting
  assert samplers.singlestep_orders(21, 3) == [3] * 6 + [2, 1]
  assert samplers.singlestep_orders(19, 3) == [3] * 6 + [1]
  assert samplers.singlestep_orders(7, 2) == [2, 2, 2, 1]
  assert samplers.singlestep_orders(20, 3, "singlestep_fixed") == [3] * 6
  lam = samplers.t_to_lambda(SCH, samplers.time_steps(SCH, "logSNR", 1000.0, 1.0, 7))
  np.testing.assert_allclose(np.diff(lam), np.full(7, np.diff(lam).mean()), rtol=1e-9)
  assert list(samplers.ddim_timesteps(SCH, num_steps=4)) == [1000, 750, 500, 250, 0]
  assert list(samplers.ddim_timesteps(SCH, num_steps=3, start_step=300)) == [300, 200, 100, 0]
  # original DDIM (`seq = range(0, T, T // N)`, 0-indexed labels) = 1-indexed 996, ..., 1
  leading = samplers.ddim_timesteps(SCH, num_steps=200, spacing="leading")
  assert list(leading) == [t + 1 for t in range(0, 1000, 5)][::-1] + [0]
  assert list(samplers.ddim_timesteps(SCH, num_steps=3, start_step=300, spacing="leading")) == [
      201, 101, 1, 0]
  for variance in ("beta", "beta_tilde"):  # DDPM: noise on every step but the last
    sigma = samplers.ddpm_plan(SCH, variance=variance).sigma
    assert sigma[-1] == 0 and (sigma[:-1] > 0).all()


CONFIGS = [("ddpm", dict(start_step=37)), ("ddpm", dict(start_step=20, variance="beta")),
           ("ddim", dict(num_steps=13)), ("ddim", dict(timesteps=(900, 500, 20))),
           ("ddim", dict(num_steps=6, spacing="leading")),
           ("dpm_solver", dict(num_steps=10, order=3, skip="time_uniform")),
           ("dpm_solver", dict(num_steps=20, order=3)),
           ("dpm_solver", dict(num_steps=11, order=2, denoise_to_zero=True)),
           ("dpm_solver", dict(num_steps=11, order=3, method="singlestep_fixed")),
           ("dpm_solver_pp", dict(num_steps=7, denoise_to_zero=True))]


def test_nfe_counts_real_network_calls():
  calls = []
  def eps_fn(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return ORC.eps(x, t)
  x = x_at(1000, 8)
  for name, kw in CONFIGS:
    calls.clear()
    jax.block_until_ready(samplers.sample(name, eps_fn, SCH, x, jax.random.key(0), **kw))
    jax.effects_barrier()
    assert len(calls) == samplers.nfe(name, **kw) == len(samplers.make_plan(name, SCH, **kw))
  assert samplers.nfe("ddpm", num_timesteps=1000) == 1000
  assert samplers.nfe("dpm_solver", num_steps=11, order=3, method="singlestep_fixed") == 9
  assert samplers.nfe("ddim", num_steps=5, clip_x0=True) == 5  # clipping costs no call


# ------------------------------------------------------------------ official-code reference

class OfficialVP:
  """Official `NoiseScheduleVP('discrete')` + `DPM_Solver` time handling (v2.0, before the
  2023 lambda clip), written from LuChengTHU/dpm-solver in its own units: t in [1/N, 1],
  log alpha piecewise linear through (n/N, 0.5 log ab_n). Nothing from jisp.diffusion."""

  def __init__(self, betas):
    self.N = len(betas)
    self.t_array = np.linspace(0.0, 1.0, self.N + 1)[1:]
    self.log_alpha_array = 0.5 * np.cumsum(np.log1p(-np.asarray(betas, np.float64)))

  def log_alpha(self, t):
    return np.interp(t, self.t_array, self.log_alpha_array)

  def sigma(self, t):
    return np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t)))

  def lam(self, t):
    la = self.log_alpha(t)
    return la - 0.5 * np.log(1.0 - np.exp(2.0 * la))

  def inverse_lambda(self, lam):
    la = -0.5 * np.logaddexp(0.0, -2.0 * lam)
    return np.interp(la, self.log_alpha_array[::-1], self.t_array[::-1])

  def time_steps(self, skip, t_T, t_0, n):
    if skip == "logSNR":
      return self.inverse_lambda(np.linspace(self.lam(t_T), self.lam(t_0), n + 1))
    if skip == "time_uniform":
      return np.linspace(t_T, t_0, n + 1)
    assert skip == "time_quadratic"
    return np.linspace(t_T ** 0.5, t_0 ** 0.5, n + 1) ** 2

  def eps(self, x, t):
    """The Gaussian oracle's eps* at official time t (float64)."""
    ab = np.exp(2.0 * self.log_alpha(t))
    return np.sqrt(1 - ab) * (x - np.sqrt(ab) * MU) / (ab * S ** 2 + 1 - ab)

  def data(self, x, t):
    return (x - self.sigma(t) * self.eps(x, t)) / np.exp(self.log_alpha(t))


VP = OfficialVP(np.linspace(0.0015, 0.0195, 1000))  # = SCH, built independently


def ref_dpm_solver(x, steps, order, skip, denoise_to_zero=False, method="singlestep"):
  """Official `DPM_Solver.sample(method=..., algorithm_type="dpmsolver", solver_type=
  "dpmsolver")` in float64: orders from `get_orders_and_timesteps_for_singlestep_solver`
  (or steps // order of `order`), and per step r1, r2 from the lambdas of
  `get_time_steps(skip, s, t, order)`."""
  t_T, t_0 = 1.0, 1.0 / VP.N
  if method == "singlestep_fixed":
    K, orders = steps // order, [order] * (steps // order)
  elif order == 3:
    K = steps // 3 + 1
    orders = {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[
        steps % 3]
  elif order == 2:
    K = (steps + 1) // 2
    orders = [2] * (steps // 2) + [1] * (steps % 2)
  else:
    K, orders = steps, [1] * steps
  if skip == "logSNR" or method == "singlestep_fixed":
    outer = VP.time_steps(skip, t_T, t_0, K)
  else:
    outer = VP.time_steps(skip, t_T, t_0, steps)[np.cumsum([0] + orders)]
  for s, t, k in zip(outer[:-1], outer[1:], orders):
    lam_in = VP.lam(VP.time_steps(skip, s, t, k))
    h_in = lam_in[-1] - lam_in[0]
    h = VP.lam(t) - VP.lam(s)  # the update's own h, from s and t
    la_s, la_t, sig_t = VP.log_alpha(s), VP.log_alpha(t), VP.sigma(t)
    phi_1 = np.expm1(h)
    m_s = VP.eps(x, s)
    if k == 1:
      x = np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s
      continue
    r1 = (lam_in[1] - lam_in[0]) / h_in
    s1 = VP.inverse_lambda(VP.lam(s) + r1 * h)
    x_s1 = np.exp(VP.log_alpha(s1) - la_s) * x - VP.sigma(s1) * np.expm1(r1 * h) * m_s
    m_1 = VP.eps(x_s1, s1)
    if k == 2:
      x = (np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s
           - 0.5 / r1 * sig_t * phi_1 * (m_1 - m_s))
      continue
    r2 = (lam_in[2] - lam_in[0]) / h_in
    s2 = VP.inverse_lambda(VP.lam(s) + r2 * h)
    phi_22 = np.expm1(r2 * h) / (r2 * h) - 1
    phi_2 = phi_1 / h - 1
    x_s2 = (np.exp(VP.log_alpha(s2) - la_s) * x - VP.sigma(s2) * np.expm1(r2 * h) * m_s
            - r2 / r1 * VP.sigma(s2) * phi_22 * (m_1 - m_s))
    m_2 = VP.eps(x_s2, s2)
    x = np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s - 1 / r2 * sig_t * phi_2 * (m_2 - m_s)
  return VP.data(x, t_0) if denoise_to_zero else x


def ref_dpm_solver_pp(x, steps, skip, lower_last=True, denoise_to_zero=False):
  """Official multistep DPM-Solver++ order 2 (dpmsolver type) in float64. lower_last: the
  last ODE step is 1st order when steps < 10 (official lower_order_final, also with
  denoise_to_zero); False with denoise_to_zero is diffusers' final_sigmas_type="zero"."""
  ts = VP.time_steps(skip, 1.0, 1.0 / VP.N, steps)
  prev = [(ts[0], VP.data(x, ts[0]))]
  for i in range(1, steps + 1):
    t = ts[i]
    sig_0, lam_0 = VP.sigma(prev[-1][0]), VP.lam(prev[-1][0])
    la_t, sig_t, lam_t = VP.log_alpha(t), VP.sigma(t), VP.lam(t)
    h = lam_t - lam_0
    phi = np.expm1(-h)
    x = sig_t / sig_0 * x - np.exp(la_t) * phi * prev[-1][1]
    if i > 1 and not (lower_last and steps < 10 and i == steps):
      r0 = (lam_0 - VP.lam(prev[-2][0])) / h
      x = x - 0.5 * np.exp(la_t) * phi * (prev[-1][1] - prev[-2][1]) / r0
    if i < steps:
      prev.append((t, VP.data(x, t)))
  return VP.data(x, ts[-1]) if denoise_to_zero else x


def test_official_reference_schedule_is_the_test_schedule():
  # The reference's own time axis: official t = jisp t / N, same ab at the grid points.
  np.testing.assert_allclose(np.exp(2 * VP.log_alpha(np.arange(1, 1001) / 1000)),
                             SCH.alpha_bars[1:], rtol=1e-12)


@pytest.mark.parametrize("order,skip", [(1, "logSNR"), (2, "time_quadratic"), (3, "logSNR"),
                                        (3, "time_uniform"), (2, "time_uniform"),
                                        (3, "time_quadratic")])
def test_dpm_solver_matches_official_transcription(order, skip):
  x = x_at(1000, 64)
  got = run("dpm_solver", x, num_steps=20, order=order, skip=skip)
  want = ref_dpm_solver(np.asarray(x, np.float64), 20, order, skip)
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_dpm_solver_official_odd_nfe_denoise_to_zero_and_fixed_orders():
  x = x_at(1000, 64)
  for order, skip in [(3, "time_uniform"), (2, "time_quadratic")]:
    got = run("dpm_solver", x, num_steps=13, order=order, skip=skip, denoise_to_zero=True)
    want = ref_dpm_solver(np.asarray(x, np.float64), 13, order, skip, denoise_to_zero=True)
    np.testing.assert_allclose(got, want, atol=2e-4)
  got = run("dpm_solver", x, num_steps=14, order=3, skip="time_uniform",
            method="singlestep_fixed")
  want = ref_dpm_solver(np.asarray(x, np.float64), 14, 3, "time_uniform",
                        method="singlestep_fixed")
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_dpm_solver_time_uniform_evaluates_on_the_nfe_grid():
  """Official: with time_uniform every evaluation of a singlestep run sits on the uniform
  NFE grid (a step of order k spans k of its intervals; its inner points are theirs)."""
  for nfe, order in [(20, 3), (21, 3), (19, 3), (11, 2)]:
    t = samplers.dpm_solver_plan(SCH, num_steps=nfe, order=order, skip="time_uniform").t
    np.testing.assert_allclose(t, np.linspace(1000.0, 1.0, nfe + 1)[:-1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("steps,skip", [(6, "logSNR"), (12, "time_uniform")])
def test_dpm_solver_pp_matches_official_transcription(steps, skip):
  x = x_at(1000, 64)
  got = run("dpm_solver_pp", x, num_steps=steps, skip=skip)
  want = ref_dpm_solver_pp(np.asarray(x, np.float64), steps, skip)
  np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("steps,skip", [(6, "logSNR"), (5, "time_uniform"), (12, "logSNR")])
def test_dpm_solver_pp_denoise_to_zero_keeps_the_last_ode_step_second_order(steps, skip):
  """With the final x0 evaluation, that evaluation is the lowered final step (diffusers'
  final_sigmas_type="zero"); lowering the last ODE step too (the official code) costs
  accuracy on the exact ODE map to t=0."""
  x = x_at(1000, 512)
  x64 = np.asarray(x, np.float64)
  got = run("dpm_solver_pp", x, num_steps=steps, skip=skip, denoise_to_zero=True)
  np.testing.assert_allclose(got, ref_dpm_solver_pp(x64, steps, skip, lower_last=False,
                                                    denoise_to_zero=True), atol=2e-4)
  official = ref_dpm_solver_pp(x64, steps, skip, lower_last=True, denoise_to_zero=True)
  if steps < 10:
    assert ode_error(got, x, 1000) < 0.5 * ode_error(official, x, 1000)
  else:  # from 10 steps nothing is lowered either way
    np.testing.assert_allclose(got, official, atol=2e-4)


# ------------------------------------------------------------------ convergence to the exact law

def _ho_tables(variance):
  """beta, alpha, alpha-bar and sigma^2 (Ho et al. Sec. 3.2: beta or beta-tilde) of SCH,
  computed here from the schedule's definition (index = timestep, 0 = data)."""
  b = np.concatenate([[0.0], np.linspace(0.0015, 0.0195, 1000)])
  a = 1 - b
  ab = np.cumprod(a)
  bt = np.zeros_like(b)
  bt[1:] = (1 - ab[:-1]) / (1 - ab[1:]) * b[1:]
  return b, a, ab, (bt if variance == "beta_tilde" else b)


def ddpm_chain_moments(variance, t_from=1000):
  """Exact mean and variance of x_0 under the discrete DDPM chain (Ho et al. Algorithm 2)
  with the Gaussian oracle, which makes each step affine: eps* = k_t (x - sqrt(ab_t) mu),
  x_{t-1} = (x - beta_t / sqrt(1 - ab_t) eps*) / sqrt(a_t) + sigma_t z (no z at t = 1)."""
  b, a, ab, var = _ho_tables(variance)
  m, v = np.sqrt(ab[t_from]) * MU, ab[t_from] * S ** 2 + 1 - ab[t_from]
  for t in range(t_from, 0, -1):
    k = np.sqrt(1 - ab[t]) / (ab[t] * S ** 2 + 1 - ab[t])
    c = b[t] / np.sqrt(1 - ab[t])
    A, B = (1 - c * k) / np.sqrt(a[t]), c * k * np.sqrt(ab[t]) * MU / np.sqrt(a[t])
    m, v = A * m + B, A * A * v + (var[t] if t > 1 else 0.0)
  return m, v


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_1000_steps_gives_the_data_law(variance):
  y = run("ddpm", x_at(1000), variance=variance)
  mean_err, var_err = moment_errors(y)
  # MC std error at N=8192: mean <= 0.0055, var <= 0.004 (s=0.5); DDPM's own bias below
  assert mean_err < 0.02 and var_err < 0.015, (mean_err, var_err)
  assert np.isfinite(y).all()
  # The law of the discrete chain itself, exactly: DDPM's bias against the data law (its
  # beta-tilde chain shrinks the s=0.1 variance by a fifth) no longer hides in a loose
  # tolerance, so 5 standard errors here see an off-by-one in sigma_t (beta-tilde_{t-1})
  # or in the mean's coefficient (ab_{t-1}), which move that variance by 10-20%.
  m, v = ddpm_chain_moments(variance)
  n = y.shape[0]
  np.testing.assert_array_less(np.abs(y.mean(0) - m), 5 * np.sqrt(v / n))
  np.testing.assert_array_less(np.abs(y.var(0) - v), 5 * v * np.sqrt(2 / n))


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_matches_ho_algorithm2_sample_by_sample(variance):
  """Algorithm 2 in float64 with the sampler's own noise draws (one key per step, split
  from the run's key, in step order): every coefficient of every step, per sample. This
  sees what no moment test can at this N, e.g. sigma_t = sqrt(beta_{t-1}) for "beta"."""
  n, key = 256, jax.random.key(11)
  x = x_at(1000, n)
  got = run("ddpm", x, key, variance=variance)
  z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, x.shape, jnp.float32))(
      jax.random.split(key, 1000)), np.float64)
  b, a, ab, var = _ho_tables(variance)
  want = np.asarray(x, np.float64)
  for i, t in enumerate(range(1000, 0, -1)):
    eps = np.sqrt(1 - ab[t]) * (want - np.sqrt(ab[t]) * MU) / (ab[t] * S ** 2 + 1 - ab[t])
    want = (want - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(a[t])
    if t > 1:
      want = want + np.sqrt(var[t]) * z[i]
  np.testing.assert_allclose(got, want, atol=5e-5)


def test_ddim_error_falls_with_steps_and_converges():
  x = x_at(1000)
  errs = [ode_error(run("ddim", x, num_steps=n), x, 1000) for n in (5, 10, 20, 50, 200)]
  assert all(a > 1.3 * b for a, b in zip(errs, errs[1:])), errs
  mean_err, var_err = moment_errors(run("ddim", x, num_steps=200))
  # DDIM shrinks variance (each step's factor is a cosine <= 1); for s=0.1 even t=1 -> 0 is a
  # large step, so the variance tolerance is looser than the mean's.
  assert errs[-1] < 0.03 and mean_err < 0.01 and var_err < 0.025, (errs, mean_err, var_err)


def test_ddim_eta_one_over_all_steps_is_ddpm():
  # sigma^2 = (1-ab_{t-1})/(1-ab_t) (1-ab_t/ab_{t-1}) = beta-tilde_t: the same chain, same noise
  x = x_at(1000, 512)
  y1 = run("ddim", x, jax.random.key(1), num_steps=1000, eta=1.0)
  np.testing.assert_allclose(y1, run("ddpm", x, jax.random.key(1)), atol=2e-4)
  y2 = run("ddim", x, jax.random.key(2), num_steps=1000, eta=1.0)
  assert np.abs(y1 - y2).mean() > 0.05  # the noise is really drawn


def test_dpm_solver_order3_beats_order1_at_equal_nfe():
  x = x_at(1000)
  e1 = ode_error(run("dpm_solver", x, num_steps=20, order=1), x, 1000, 1.0)
  e2 = ode_error(run("dpm_solver", x, num_steps=20, order=2), x, 1000, 1.0)
  e3 = ode_error(run("dpm_solver", x, num_steps=20, order=3), x, 1000, 1.0)
  assert e3 < e2 < e1 and e3 < e1 / 5, (e1, e2, e3)
  # the paper's setting (order 3, 20 NFE) is close to the exact law at t=1
  mean_err, var_err = moment_errors(run("dpm_solver", x, num_steps=20, order=3), 1.0)
  assert mean_err < 0.01 and var_err < 0.01, (mean_err, var_err)
  # error keeps falling with NFE at order 3
  e3_30 = ode_error(run("dpm_solver", x, num_steps=30, order=3), x, 1000, 1.0)
  assert e3_30 < e3 / 2, (e3, e3_30)


def test_logsnr_steps_beat_time_uniform_on_this_schedule():
  """Why skip="logSNR" is the default: lambda rises steeply near t=1, so time_uniform's
  last steps are long in lambda (official inner grids for both)."""
  x = x_at(1000)
  for order in (2, 3):
    e_log = ode_error(run("dpm_solver", x, num_steps=20, order=order), x, 1000, 1.0)
    e_uni = ode_error(run("dpm_solver", x, num_steps=20, order=order, skip="time_uniform"),
                      x, 1000, 1.0)
    assert e_log < e_uni / 3, (order, e_log, e_uni)


def test_dpm_solver_pp_beats_ddim_at_equal_small_nfe():
  x = x_at(1000)
  for n in (8, 10):
    e_ddim = ode_error(run("ddim", x, num_steps=n), x, 1000)
    e_pp = ode_error(run("dpm_solver_pp", x, num_steps=n - 1, denoise_to_zero=True), x, 1000)
    assert e_pp < e_ddim / 3, (n, e_ddim, e_pp)


def ref_original_ddim(x, num_steps, eta=0.0, z=None):
  """ermongroup/ddim `generalized_steps` in float64: 0-indexed labels, alpha-bars of the
  zero-padded betas, `seq = range(0, T, T // N)`; the network sees label i, which is
  timestep i + 1 of the 1-indexed schedule (what jisp trains with)."""
  b = np.concatenate([[0.0], np.linspace(0.0015, 0.0195, 1000)])
  abar = lambda i: np.cumprod(1 - b)[i + 1]
  seq = list(range(0, 1000, 1000 // num_steps))
  for j, (i, i_next) in enumerate(zip(reversed(seq), reversed([-1] + seq[:-1]))):
    at, an = abar(i), abar(i_next)
    e = np.sqrt(1 - at) * (x - np.sqrt(at) * MU) / (at * S ** 2 + 1 - at)
    x0 = (x - e * np.sqrt(1 - at)) / np.sqrt(at)
    c1 = eta * np.sqrt((1 - at / an) * (1 - an) / (1 - at))
    x = np.sqrt(an) * x0 + np.sqrt(1 - an - c1 ** 2) * e + (c1 * z[j] if eta else 0.0)
  return x


def test_ddim_leading_is_the_original_ddim():
  x = x_at(1000, 64)
  got = run("ddim", x, num_steps=100, spacing="leading")
  np.testing.assert_allclose(got, ref_original_ddim(np.asarray(x, np.float64), 100), atol=1e-4)
  # ...and differs from the default trailing grid by more than that tolerance.
  assert np.abs(run("ddim", x, num_steps=100) - got).max() > 1e-3
  # eta > 0 on the leading grid: one key per step, as every plan draws its noise.
  key = jax.random.key(4)
  z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, x.shape, jnp.float32))(
      jax.random.split(key, 20)), np.float64)
  np.testing.assert_allclose(run("ddim", x, key, num_steps=20, eta=0.5, spacing="leading"),
                             ref_original_ddim(np.asarray(x, np.float64), 20, 0.5, z),
                             atol=1e-4)


def test_ddim_eta0_is_deterministic_and_invertible():
  x = x_at(1000)
  a = run("ddim", x, jax.random.key(1), num_steps=50)
  b = run("ddim", x, jax.random.key(2), num_steps=50)
  np.testing.assert_array_equal(a, b)
  x0 = x_at(0)
  inv = jax.jit(functools.partial(samplers.ddim_invert, ORC.eps, SCH), static_argnames="num_steps")
  errs = []
  for n in (100, 200):
    x_T = inv(x0, num_steps=n)
    back = run("ddim", x_T, num_steps=n)
    errs.append(float(np.sqrt(np.mean((back - np.asarray(x0)) ** 2))))
  assert errs[1] < 0.03 and errs[1] < 0.7 * errs[0], errs  # first order: halves with 2x steps
  # the inverted latents follow the exact marginal at T (standardized per dimension)
  m_T, sd_T = ORC.moments(1000)
  z = (np.asarray(x_T) - m_T) / sd_T
  assert np.abs(z.mean(0)).max() < 0.08 and np.abs(z.std(0) - 1).max() < 0.08


def test_start_step_from_exact_marginal_at_300():
  x = x_at(300)
  for name, kw, tol in [("ddpm", {}, 0.015), ("ddim", dict(num_steps=50), 0.025),
                        ("dpm_solver", dict(num_steps=12, denoise_to_zero=True), 0.01),
                        ("dpm_solver_pp", dict(num_steps=10, denoise_to_zero=True), 0.01)]:
    y = run(name, x, start_step=300, **kw)
    mean_err, var_err = moment_errors(y)
    assert mean_err < tol and var_err < tol, (name, mean_err, var_err)
    if name != "ddpm":  # deterministic: per sample, follow the exact ODE from t=300
      assert ode_error(y, x, 300) < 2 * tol, (name, ode_error(y, x, 300))
  # a wrong start (treating x_300 as x_1000) is clearly detected by the same check
  mean_err, var_err = moment_errors(run("dpm_solver_pp", x, num_steps=10, denoise_to_zero=True))
  assert max(mean_err, var_err) > 0.05


# ------------------------------------------------------------------ x0 clipping

WIDE = GaussianOracle(SCH, np.array([1.3, -1.2, 0.4, 0.9]).reshape(SHAPE),
                      np.array([0.1, 0.2, 0.3, 0.4]).reshape(SHAPE))  # much data outside [-1, 1]


def test_clip_denoised_clips_the_implied_x0_and_leaves_the_rest():
  x = x_at(1000, 64) * 3.0
  for t in (1.0, 2.0, 37.5, 500.0, 999.25, 1000.0):
    tt = jnp.full((x.shape[0],), t, jnp.float32)
    eps = np.asarray(WIDE.eps(x, tt), np.float64)
    eps_c = np.asarray(samplers.clip_denoised(WIDE.eps, SCH)(x, tt), np.float64)
    ab = float(np.exp(2 * VP.log_alpha(t / 1000)))  # the reference's own alpha-bar
    x0 = lambda e: (np.asarray(x, np.float64) - np.sqrt(1 - ab) * e) / np.sqrt(ab)
    assert np.abs(x0(eps)).max() > 1.1  # the test really clips
    np.testing.assert_allclose(x0(eps_c), np.clip(x0(eps), -1, 1), atol=2e-4)
    inside = np.abs(x0(eps)) < 0.999
    np.testing.assert_allclose(eps_c[inside], eps[inside], rtol=1e-4, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _wide(name, kw):
  return jax.jit(lambda x, key: samplers.sample(name, WIDE.eps, SCH, x, key, **dict(kw)))


@pytest.mark.parametrize("name,kw", [("ddpm", dict(start_step=300)), ("ddim", dict(num_steps=1)),
                                     ("ddim", dict(num_steps=10, spacing="leading")),
                                     ("dpm_solver", dict(num_steps=12, denoise_to_zero=True)),
                                     ("dpm_solver_pp", dict(num_steps=8, denoise_to_zero=True))])
def test_clip_x0_keeps_the_output_in_range(name, kw):
  """Each of these ends on an x0-prediction (DDPM's t=1 step and DDIM's last step to 0
  are one), so clip_x0 bounds the output; unclipped, the same run leaves [-1, 1]."""
  x = WIDE.sample_marginal(jax.random.key(1), kw.get("start_step", 1000), 512, SHAPE)
  key = jax.random.key(2)
  free = np.asarray(_wide(name, tuple(sorted(kw.items())))(x, key))
  clipped = np.asarray(_wide(name, tuple(sorted(kw.items()) + [("clip_x0", True)]))(x, key))
  assert np.abs(free).max() > 1.2 and np.abs(clipped).max() <= 1 + 1e-4, (
      np.abs(free).max(), np.abs(clipped).max())
  if name == "ddim" and kw["num_steps"] == 1:  # one step from T: the output IS clip(x0-hat)
    np.testing.assert_allclose(clipped, np.clip(free, -1, 1), atol=2e-4)


# ------------------------------------------------------------------ one compiled computation

def _trivial_eps(x, t):
  return 0.1 * x + 1e-3 * t.reshape((-1,) + (1,) * (x.ndim - 1))


def _loops(jaxpr):
  """Loop primitives (scan / while) anywhere in a jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("scan", "while"):
      found.append(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax.extend.core.Jaxpr):
          found += _loops(sub)
  return found


@pytest.mark.parametrize("name,kw", [("ddpm", {}), ("ddim", dict(num_steps=10, eta=0.5)),
                                     ("dpm_solver", dict(num_steps=20)),
                                     ("dpm_solver_pp", dict(num_steps=10))])
def test_whole_sampler_is_one_jitted_scan(name, kw):
  traces = []
  def eps_fn(x, t):
    traces.append(1)  # Python side effect: runs only while tracing
    return _trivial_eps(x, t)
  sampler = lambda x, key: samplers.sample(name, eps_fn, SCH, x, key, **kw)
  x = x_at(1000, 16)
  f = jax.jit(sampler)
  assert "stablehlo.while" in f.lower(x, jax.random.key(0)).as_text()
  f(x, jax.random.key(0))
  f(x + 1, jax.random.key(1))
  assert len(traces) == 1, len(traces)  # one trace: eps_fn sits once in one compiled loop
  # and that loop is the only one (the RNG's own lowering may add HLO whiles, hence jaxpr)
  assert _loops(jax.make_jaxpr(sampler)(x, jax.random.key(0)).jaxpr) == ["scan"]


# ------------------------------------------------------------------ sharding

@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_batch_matches_unsharded(axis_type):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  sharding = NamedSharding(mesh, P("data"))
  x = x_at(1000, 64)
  for name, kw in [("ddpm", dict(start_step=50)), ("dpm_solver", dict(num_steps=20))]:
    f = jax.jit(lambda x, key: samplers.sample(name, ORC.eps, SCH, x, key, **kw))
    want = f(x, jax.random.key(3))
    got = f(jax.device_put(x, sharding), jax.random.key(3))
    assert got.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("name,kw,msg", [
    ("ddim", dict(num_steps=2000), "num_steps"),
    ("ddim", dict(num_steps=5, eta=3.0), "eta"),
    ("ddim", dict(timesteps=(10, 20)), "decrease"),
    ("ddim", dict(num_steps=5, spacing="uniform"), "spacing"),
    ("dpm_solver", dict(num_steps=20, order=4), "order"),
    ("dpm_solver", dict(num_steps=20, skip="cosine"), "skip"),
    ("ddpm", dict(start_step=1001), "start_step"),
    ("ddpm", dict(variance="learned"), "variance"),
    ("euler", {}, "unknown sampler")])
def test_bad_options_raise_clear_errors(name, kw, msg):
  with pytest.raises(ValueError, match=msg):
    samplers.make_plan(name, SCH, **kw)
