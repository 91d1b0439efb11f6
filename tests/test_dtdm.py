"""DTDM process math (jisp.diffusion.dtdm) against closed forms, brute-force Gaussian
conditioning, an oracle network and the paper's Algorithm 2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.diffusion import dtdm, schedules

PAPER = schedules.linear(2000, 1e-6, 1e-2)   # T=2000 as configs/dtdm_raw2rgb.py (SR3's)
SMALL = schedules.linear(60, 1e-3, 0.1)      # short chain for brute-force linear algebra


def _xy(shape=(3, 4, 4, 3), seed=0):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.uniform(kx, shape, minval=-1, maxval=1),
          jax.random.uniform(ky, shape, minval=-1, maxval=1))


def _oracle(sch, y):
  """The network that returns the exact target given m_t, so y_hat (Eq. 21) = y."""
  a = jnp.asarray(sch.sqrt_alpha_bars, jnp.float32)
  b = jnp.asarray(sch.sqrt_one_minus_alpha_bars, jnp.float32)
  def f(m, t):
    ti = jnp.round(t).astype(jnp.int32)
    sh = (-1,) + (1,) * (m.ndim - 1)
    return (m - a[ti].reshape(sh) * y) / b[ti].reshape(sh)
  return f


@pytest.mark.parametrize("sch,s", [(PAPER, 100), (PAPER, 1), (PAPER, 1500), (SMALL, 20)])
def test_marginal_at_s_is_the_noised_estimate(sch, s):
  g = dtdm.gamma_s(sch, s)
  # The identity behind m_s = x_s: sqrt(1 - ab_s) gamma_s = sqrt(ab_s), in float64.
  assert abs(np.sqrt(1 - sch.alpha_bars[s]) * g - np.sqrt(sch.alpha_bars[s])) < 1e-14
  x, y = _xy()
  eps = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  t = jnp.full((x.shape[0],), s)
  m_s = dtdm.q_sample(sch, s, x, y, t, eps)
  np.testing.assert_allclose(m_s, dtdm.start_state(sch, s, x, eps), atol=2e-6, rtol=0)
  # ...and it no longer depends on y at all.
  np.testing.assert_allclose(dtdm.q_sample(sch, s, x, -y, t, eps), m_s, atol=2e-6, rtol=0)
  # At t = 0 the marginal is y itself.
  np.testing.assert_allclose(dtdm.q_sample(sch, s, x, y, jnp.zeros_like(t), eps), y, atol=1e-7)


def test_target_and_y_hat_are_consistent():
  x, y = _xy()
  s = 100
  t = jnp.array([1, 37, 100])
  eps = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  m = dtdm.q_sample(PAPER, s, x, y, t, eps)
  f = dtdm.training_target(PAPER, s, x, y, eps)
  np.testing.assert_allclose(dtdm.predict_y(PAPER, m, f, t), y, atol=2e-5)


def test_loss_is_zero_for_the_oracle_and_gamma2_mse_for_eps_only():
  x, y = _xy((8, 4, 4, 3))
  s = 100
  cond = jnp.zeros_like(x)
  orc = _oracle(PAPER, y)
  l0 = dtdm.loss(lambda inp, t: orc(inp[..., :3], t.astype(jnp.float32)), PAPER, s, x, y,
                 cond, jax.random.PRNGKey(0))
  assert float(l0) < 1e-8
  # A net that returns only eps misses gamma_s (x - y): loss = gamma_s^2 mean((x-y)^2).
  a = jnp.asarray(PAPER.sqrt_alpha_bars, jnp.float32)
  b = jnp.asarray(PAPER.sqrt_one_minus_alpha_bars, jnp.float32)
  g = dtdm.gamma_s(PAPER, s)
  def eps_only(inp, t):   # recovers eps from m_t knowing x, y: eps = (m - a y)/b - g (x - y)
    sh = (-1, 1, 1, 1)
    return (inp[..., :3] - a[t].reshape(sh) * y) / b[t].reshape(sh) - g * (x - y)
  l1 = dtdm.loss(eps_only, PAPER, s, x, y, cond, jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(l1), g ** 2 * float(jnp.mean((x - y) ** 2)), rtol=1e-4)


def test_forward_steps_from_y_reproduce_the_marginal():
  """Iterate Eq. 15 (corrected mean) from m_0 = y; compare mean and variance of m_t with
  q(m_t | x, y) = N(sqrt(ab_t) m_0^t, 1 - ab_t). N = 40000 chains; tolerance: 5 standard
  errors of the mean (std/sqrt(N)) and of the variance (var sqrt(2/N))."""
  sch, s, n = PAPER, 100, 40000
  x = jnp.array([0.9, -0.9, 0.1])
  y = jnp.array([-0.9, 0.9, 0.3])
  keys = jax.random.split(jax.random.PRNGKey(1), s)

  def body(m, tk):
    t, k = tk
    return dtdm.forward_step(sch, s, m, x, y, t, jax.random.normal(k, m.shape)), m

  ts = jnp.arange(1, s + 1)
  m_s, hist = jax.lax.scan(body, jnp.broadcast_to(y, (n, 3)), (ts, keys))
  for t, m in ((50, hist[50]), (s, m_s)):   # hist[k] = m_k
    mean = np.sqrt(sch.alpha_bars[t]) * np.asarray(dtdm.m0_t(sch, s, x, y, t))
    var = 1 - sch.alpha_bars[t]
    np.testing.assert_array_less(np.abs(np.mean(m, 0) - mean), 5 * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(np.var(m, 0) - var), 5 * var * np.sqrt(2 / n))
  # At s the chain has reached x_s: mean sqrt(ab_s) x.
  np.testing.assert_allclose(np.mean(m_s, 0), np.sqrt(sch.alpha_bars[s]) * x, atol=0.01)

  # Eq. 16 as extracted (sqrt(a_t) in front of m_0^t - m_0^{t-1}) does NOT reach x_s
  # (misses by ~ 1 - sqrt(ab) of the x - y path: here > 8 standard errors).
  def body_printed(m, tk):
    t, k = tk
    sa = jnp.sqrt(jnp.asarray(sch.alphas, jnp.float32)[t])
    mean = sa * m + sa * (dtdm.m0_t(sch, s, x, y, t) - dtdm.m0_t(sch, s, x, y, t - 1))
    return mean + jnp.sqrt(jnp.asarray(sch.betas, jnp.float32)[t]) * jax.random.normal(k, m.shape), None
  m_p, _ = jax.lax.scan(body_printed, jnp.broadcast_to(y, (n, 3)), (ts, keys))
  se = np.sqrt((1 - sch.alpha_bars[s]) / n)
  assert np.max(np.abs(np.mean(m_p, 0) - np.sqrt(sch.alpha_bars[s]) * x)) > 8 * se


def _chain_moments(sch, s, x, y):
  """Mean (k, D) and scalar covariance (k, k) of m_0..m_s under the forward model written
  out step by step (Eq. 12-13 with the bars): m_k = sqrt(a_k) m_{k-1} +
  sqrt(ab_k)(m_0^k - m_0^{k-1}) + sqrt(beta_k) eps_k, m_0 = y (no variance)."""
  ab, al, be = sch.alpha_bars, sch.alphas, sch.betas
  g = np.sqrt(ab[s]) / np.sqrt(1 - ab[s])
  m0 = lambda k: y + np.sqrt(1 - ab[k]) / np.sqrt(ab[k]) * g * (x - y)
  mu = [y]
  # Cov(m_i, m_j) = prod_{k=i+1..j} sqrt(a_k) Var(m_i) for i <= j.
  var = [0.0]
  for k in range(1, s + 1):
    mu.append(np.sqrt(al[k]) * mu[-1] + np.sqrt(ab[k]) * (m0(k) - m0(k - 1)))
    var.append(al[k] * var[-1] + be[k])
  cov = np.zeros((s + 1, s + 1))
  for i in range(s + 1):
    for j in range(i, s + 1):
      cov[i, j] = cov[j, i] = np.prod(np.sqrt(al[i + 1:j + 1])) * var[i]
  return np.array(mu), cov


@pytest.mark.parametrize("t,tp", [(20, 19), (7, 6), (2, 1), (1, 0), (20, 13), (11, 3), (20, 0)])
def test_reverse_step_is_gaussian_conditioning(t, tp):
  """m_{tp} | m_t, x, y by numeric conditioning of the joint Gaussian of (m_tp, m_t) over
  random 5-vectors, vs reverse_step with the oracle f (so y_hat = y) and eta = 1."""
  sch, s, D = SMALL, 20, 5
  rng = np.random.default_rng(t * 100 + tp)
  x, y = rng.uniform(-1, 1, D), rng.uniform(-1, 1, D)
  mu, cov = _chain_moments(sch, s, x, y)
  # Joint of the 2D-vector (m_tp, m_t): block covariance, identity across coordinates.
  I = np.eye(D)
  S = np.block([[cov[tp, tp] * I, cov[tp, t] * I], [cov[t, tp] * I, cov[t, t] * I]])
  m_t = mu[t] + np.sqrt(cov[t, t]) * rng.standard_normal(D)
  A, B, C = S[:D, :D], S[:D, D:], S[D:, D:]
  cond_mean = mu[tp] + B @ np.linalg.solve(C, m_t - mu[t])
  cond_cov = A - B @ np.linalg.solve(C, B.T)

  f = (m_t - np.sqrt(sch.alpha_bars[t]) * y) / np.sqrt(1 - sch.alpha_bars[t])
  got = dtdm.reverse_step(sch, s, m_t, f, x, t, tp, eta=1.0)
  np.testing.assert_allclose(got, cond_mean, atol=1e-10)
  sigma = dtdm.reverse_coefficients(sch, s, t, tp, eta=1.0)[3]
  np.testing.assert_allclose(cond_cov, sigma ** 2 * I, atol=1e-12)


def _algorithm2(sch, s, t):
  """Algorithm 2 / Eq. 24-25 as printed, with the alpha / alpha-bar swap in the
  coefficient of m_t corrected (DESIGN.md): (c_m, c_f, c_x, sigma^2)."""
  a, ab = sch.alphas, sch.alpha_bars
  g = np.sqrt(ab[s]) / np.sqrt(1 - ab[s])
  lam = np.sqrt(1 - ab[t - 1]) * (1 - np.sqrt(a[t]) * np.sqrt(1 - ab[t - 1])
                                   / np.sqrt(1 - ab[t])) * g
  c_f = np.sqrt(1 - ab[t]) / np.sqrt(ab[t]) * lam - (1 - a[t]) / (np.sqrt(a[t]) * np.sqrt(1 - ab[t]))
  c_m = 1 / np.sqrt(a[t]) - lam / np.sqrt(ab[t])
  c_m_printed = 1 / np.sqrt(ab[t]) - lam / np.sqrt(a[t])
  return c_m, c_f, lam, sch.posterior_variance[t], c_m_printed


@pytest.mark.parametrize("sch,s", [(PAPER, 100), (PAPER, 7), (SMALL, 20)])
def test_coefficients_match_algorithm2(sch, s):
  swap = []
  for t in range(1, s + 1):
    c_m, c_f, c_x, sig = dtdm.reverse_coefficients(sch, s, t, t - 1, eta=1.0)
    p_m, p_f, p_x, p_var, printed = _algorithm2(sch, s, t)
    np.testing.assert_allclose([c_m, c_f, c_x, sig ** 2], [p_m, p_f, p_x, p_var],
                               rtol=1e-9, atol=1e-12)
    swap.append(abs(printed - c_m))
  # The swap is a real difference, not a notational one (it vanishes only at t = 1).
  assert swap[0] < 1e-12 and min(swap[1:], default=1) > 1e-12 and max(swap) > 1e-6


@pytest.mark.parametrize("s,steps", [(1, None), (2, None), (10, None), (100, None),
                                     (100, 10), (100, 1), (1500, 30)])
def test_oracle_chain_returns_y_exactly_noise_off(s, steps):
  x, y = _xy(seed=s)
  out = dtdm.sample(_oracle(PAPER, y), PAPER, s, x, jax.random.PRNGKey(0), num_steps=steps,
                    noise=False)
  np.testing.assert_allclose(out, y, atol=2e-5, rtol=0)


def test_oracle_chain_noise_off_follows_the_posterior_mean_path():
  """The final step alone maps any m_1 to y_hat, so "returns y" cannot see the earlier
  coefficients; the mid-chain state can. With the oracle and z = 0, u_k = m_k -
  sqrt(ab_k) m_0^k shrinks by the DDPM posterior factor at every step:
  u_k = u_s prod_{j=k+1..s} sqrt(a_j)(1 - ab_{j-1})/(1 - ab_j), u_s = m_s - sqrt(ab_s) x.
  Algorithm 2's printed m_t coefficient (alpha / alpha-bar swapped) misses this path."""
  s, k = 100, 50
  x, y = _xy()
  ab, a = PAPER.alpha_bars, PAPER.alphas
  m_s = dtdm.start_state(PAPER, s, x, jax.random.normal(jax.random.PRNGKey(1), x.shape))
  j = np.arange(k + 1, s + 1)
  shrink = np.prod(np.sqrt(a[j]) * (1 - ab[j - 1]) / (1 - ab[j]))
  want = (np.sqrt(ab[k]) * dtdm.m0_t(PAPER, s, x, y, k)
          + shrink * (m_s - np.sqrt(ab[s]) * x))
  p = dtdm.plan(PAPER, s, grid=np.arange(s, k - 1, -1), noise=False)
  got = dtdm.run_plan(_oracle(PAPER, y), p, m_s, x)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
  t = p.t.astype(int)
  printed = 1 / np.sqrt(ab[t]) - p.c_x / np.sqrt(a[t])
  bad = dtdm.Plan(t=p.t, c_m=printed, c_f=p.c_f, c_x=p.c_x, sigma=p.sigma)
  assert float(jnp.max(jnp.abs(dtdm.run_plan(_oracle(PAPER, y), bad, m_s, x) - want))) > 0.01


@pytest.mark.parametrize("grid", [[100, 99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 60],
                                  [100, 80, 60, 40, 20, 10]])
def test_oracle_chain_with_noise_keeps_the_marginal(grid):
  """Posterior sampling from m_s ~ q(m_s | x, y) must leave m_k ~ q(m_k | x, y) at every k:
  a check of sigma and of every coefficient, adjacent and strided. N = 20000, 5 s.e."""
  n, s = 20000, 100
  x = jnp.array([0.6, -0.8, 0.2])
  y = jnp.array([-0.3, 0.4, 0.9])
  xb, yb = jnp.broadcast_to(x, (n, 3)), jnp.broadcast_to(y, (n, 3))
  k0, k1 = jax.random.split(jax.random.PRNGKey(5))
  m_s = dtdm.start_state(PAPER, s, xb, jax.random.normal(k0, xb.shape))
  out = dtdm.run_plan(_oracle(PAPER, yb), dtdm.plan(PAPER, s, grid=grid), m_s, xb, k1)
  k = grid[-1]
  mean = np.sqrt(PAPER.alpha_bars[k]) * np.asarray(dtdm.m0_t(PAPER, s, x, y, k))
  var = 1 - PAPER.alpha_bars[k]
  np.testing.assert_array_less(np.abs(np.mean(out, 0) - mean), 5 * np.sqrt(var / n))
  np.testing.assert_array_less(np.abs(np.var(out, 0) - var), 5 * var * np.sqrt(2 / n))


def test_eta_zero_is_deterministic_and_strided_grid_is_trailing():
  np.testing.assert_array_equal(dtdm.timesteps(100, 4), [100, 75, 50, 25, 0])
  np.testing.assert_array_equal(dtdm.timesteps(5), [5, 4, 3, 2, 1, 0])
  p = dtdm.plan(PAPER, 100, num_steps=10, eta=0.0)
  assert np.all(p.sigma == 0) and len(p) == 10
  with pytest.raises(ValueError, match="num_steps"):
    dtdm.timesteps(10, 11)
  with pytest.raises(ValueError, match="outside"):
    dtdm.gamma_s(PAPER, 2001)


def test_start_below_s_is_the_papers_test_protocol():
  """DiffRAW tests an s=100 model with 93 noising and 93 reverse steps: the chain starts
  at x_93 = sqrt(ab_93) x + sqrt(1-ab_93) eps and runs the s-model's reverse steps."""
  s, t0 = 100, 93
  p = dtdm.plan(PAPER, s, start_step=t0)
  np.testing.assert_array_equal(p.t, np.arange(t0, 0, -1))
  for t, c in zip(p.t.astype(int), zip(p.c_m, p.c_f, p.c_x, p.sigma)):
    np.testing.assert_array_equal(c, dtdm.reverse_coefficients(PAPER, s, t, t - 1))  # gamma_100
  assert len(dtdm.plan(PAPER, s, start_step=t0, num_steps=10)) == 10
  x, y = _xy()
  out = dtdm.sample(_oracle(PAPER, y), PAPER, s, x, jax.random.PRNGKey(0), start_step=t0,
                    noise=False)
  np.testing.assert_allclose(out, y, atol=2e-5, rtol=0)
  # The start state: with f = 0 one step to 0 returns m_t0 / sqrt(ab_t0) = x + k eps,
  # k = sqrt(1-ab_t0)/sqrt(ab_t0), 7% below that of s.
  xb = jnp.zeros((20000, 3))
  zero = lambda m, t: jnp.zeros_like(m)
  for t_start in (t0, s):
    d = np.asarray(dtdm.sample(zero, PAPER, s, xb, jax.random.PRNGKey(1), start_step=t_start,
                               num_steps=1, eta=0.0))
    k = np.sqrt(1 - PAPER.alpha_bars[t_start]) / np.sqrt(PAPER.alpha_bars[t_start])
    np.testing.assert_allclose(d.std(0), k, rtol=0.02)
  for bad in (0, 101):
    with pytest.raises(ValueError, match="start_step"):
      dtdm.plan(PAPER, s, start_step=bad)
  with pytest.raises(ValueError, match="start_step=93"):
    dtdm.plan(PAPER, s, start_step=t0, grid=[100, 0])


def test_residual_loss_is_zero_for_the_oracle_and_the_estimate_gap_for_zero():
  """dtdm.prediction=residual: a network returning y - x has zero loss; the zero network
  (the estimate itself) costs mean((x - y)^2); f_of is the inverse of Eq. 21."""
  x, y = _xy((8, 4, 4, 3))
  s = 100
  cond = jnp.zeros_like(x)
  key = jax.random.PRNGKey(0)
  assert float(dtdm.residual_loss(lambda inp, t: y - x, PAPER, s, x, y, cond, key)) < 1e-12
  l0 = dtdm.residual_loss(lambda inp, t: jnp.zeros_like(y), PAPER, s, x, y, cond, key)
  np.testing.assert_allclose(float(l0), float(jnp.mean((x - y) ** 2)), rtol=1e-6)
  t = jnp.array([1, 5, 37, 60, 80, 90, 99, 100])
  m = dtdm.q_sample(PAPER, s, x, y, t, jax.random.normal(jax.random.PRNGKey(1), x.shape))
  f = dtdm.f_of(PAPER, m, y, t)
  np.testing.assert_allclose(dtdm.predict_y(PAPER, m, f, t), y, atol=1e-5)
  with pytest.raises(ValueError, match="prediction"):
    dtdm.check_prediction("eps")
