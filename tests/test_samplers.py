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
  for variance in ("beta", "beta_tilde"):  # DDPM: noise on every step but the last
    sigma = samplers.ddpm_plan(SCH, variance=variance).sigma
    assert sigma[-1] == 0 and (sigma[:-1] > 0).all()


CONFIGS = [("ddpm", dict(start_step=37)), ("ddpm", dict(start_step=20, variance="beta")),
           ("ddim", dict(num_steps=13)), ("ddim", dict(timesteps=(900, 500, 20))),
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


# ------------------------------------------------------------------ official-code reference

def _eps64(x, t):
  ab = float(samplers.continuous_alpha_bar(SCH, t))
  return np.sqrt(1 - ab) * (x - np.sqrt(ab) * MU) / (ab * S ** 2 + 1 - ab)


def _ns(t):
  la = float(samplers.continuous_log_alpha(SCH, t))
  return la, np.sqrt(1 - np.exp(2 * la)), float(samplers.t_to_lambda(SCH, t))


def ref_dpm_solver(x, nfe, order, skip):
  """Straight float64 transcription of official DPM-Solver 'singlestep' (eps-prediction)."""
  orders = samplers.singlestep_orders(nfe, order)
  if skip == "logSNR":
    outer = samplers.time_steps(SCH, skip, 1000.0, 1.0, len(orders))
  else:
    outer = samplers.time_steps(SCH, skip, 1000.0, 1.0, nfe)[np.cumsum([0] + orders)]
  for s, t, k in zip(outer[:-1], outer[1:], orders):
    (la_s, _, lam_s), (la_t, sig_t, lam_t) = _ns(s), _ns(t)
    h = lam_t - lam_s
    phi_1 = np.expm1(h)
    m_s = _eps64(x, s)
    if k == 1:
      x = np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s
      continue
    r1 = 0.5 if k == 2 else 1 / 3
    s1 = float(samplers.lambda_to_t(SCH, lam_s + r1 * h))
    la_1, sig_1, _ = _ns(s1)
    x_s1 = np.exp(la_1 - la_s) * x - sig_1 * np.expm1(r1 * h) * m_s
    m_1 = _eps64(x_s1, s1)
    if k == 2:
      x = (np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s
           - 0.5 / r1 * sig_t * phi_1 * (m_1 - m_s))
      continue
    r2 = 2 / 3
    s2 = float(samplers.lambda_to_t(SCH, lam_s + r2 * h))
    la_2, sig_2, _ = _ns(s2)
    phi_22 = np.expm1(r2 * h) / (r2 * h) - 1
    phi_2 = phi_1 / h - 1
    x_s2 = (np.exp(la_2 - la_s) * x - sig_2 * np.expm1(r2 * h) * m_s
            - r2 / r1 * sig_2 * phi_22 * (m_1 - m_s))
    m_2 = _eps64(x_s2, s2)
    x = np.exp(la_t - la_s) * x - sig_t * phi_1 * m_s - 1 / r2 * sig_t * phi_2 * (m_2 - m_s)
  return x


def ref_dpm_solver_pp(x, steps, skip):
  """Float64 transcription of official multistep DPM-Solver++ order 2, lower_order_final."""
  ts = samplers.time_steps(SCH, skip, 1000.0, 1.0, steps)
  def data(x, t):
    la, sig, _ = _ns(t)
    return (x - sig * _eps64(x, t)) / np.exp(la)
  prev = [(ts[0], data(x, ts[0]))]
  for i in range(1, steps + 1):
    t = ts[i]
    _, sig_0, lam_0 = _ns(prev[-1][0])
    la_t, sig_t, lam_t = _ns(t)
    h = lam_t - lam_0
    phi = np.expm1(-h)
    x = sig_t / sig_0 * x - np.exp(la_t) * phi * prev[-1][1]
    if i > 1 and not (steps < 10 and i == steps):
      r0 = (lam_0 - _ns(prev[-2][0])[2]) / h
      x = x - 0.5 * np.exp(la_t) * phi * (prev[-1][1] - prev[-2][1]) / r0
    if i < steps:
      prev.append((t, data(x, t)))
  return x


@pytest.mark.parametrize("order,skip", [(1, "logSNR"), (2, "time_quadratic"), (3, "logSNR"),
                                        (3, "time_uniform")])
def test_dpm_solver_matches_official_transcription(order, skip):
  x = x_at(1000, 64)
  got = run("dpm_solver", x, num_steps=20, order=order, skip=skip)
  want = ref_dpm_solver(np.asarray(x, np.float64), 20, order, skip)
  np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("steps,skip", [(6, "logSNR"), (12, "time_uniform")])
def test_dpm_solver_pp_matches_official_transcription(steps, skip):
  x = x_at(1000, 64)
  got = run("dpm_solver_pp", x, num_steps=steps, skip=skip)
  want = ref_dpm_solver_pp(np.asarray(x, np.float64), steps, skip)
  np.testing.assert_allclose(got, want, atol=2e-4)


# ------------------------------------------------------------------ convergence to the exact law

@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_1000_steps_gives_the_data_law(variance):
  y = run("ddpm", x_at(1000), variance=variance)
  mean_err, var_err = moment_errors(y)
  # MC std error at N=8192: mean <= 0.0055, var <= 0.004 (s=0.5); DDPM's own bias ~1e-3
  assert mean_err < 0.02 and var_err < 0.015, (mean_err, var_err)
  assert np.isfinite(y).all()


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


def test_dpm_solver_pp_beats_ddim_at_equal_small_nfe():
  x = x_at(1000)
  for n in (8, 10):
    e_ddim = ode_error(run("ddim", x, num_steps=n), x, 1000)
    e_pp = ode_error(run("dpm_solver_pp", x, num_steps=n - 1, denoise_to_zero=True), x, 1000)
    assert e_pp < e_ddim / 3, (n, e_ddim, e_pp)


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
    ("dpm_solver", dict(num_steps=20, order=4), "order"),
    ("dpm_solver", dict(num_steps=20, skip="cosine"), "skip"),
    ("ddpm", dict(start_step=1001), "start_step"),
    ("ddpm", dict(variance="learned"), "variance"),
    ("euler", {}, "unknown sampler")])
def test_bad_options_raise_clear_errors(name, kw, msg):
  with pytest.raises(ValueError, match=msg):
    samplers.make_plan(name, SCH, **kw)
