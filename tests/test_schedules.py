"""Schedules and the forward process with the square roots in the right place."""
import jax
import jax.numpy as jnp
import numpy as np

from jisp.diffusion import schedules, losses


def test_linear_schedules_end_points_and_shape():
  for s in (schedules.linear(), schedules.linear_ldm()):
    assert s.num_timesteps == 1000 and s.betas[0] == 0.0
    np.testing.assert_allclose([s.betas[1], s.betas[-1]], [0.0015, 0.0195], rtol=1e-12)
  ldm = schedules.linear_ldm()
  # LDM spaces sqrt(beta) linearly: its midpoint sits below the plain linear one.
  assert ldm.betas[500] < schedules.linear().betas[500]
  np.testing.assert_allclose(np.diff(np.sqrt(ldm.betas[1:])), np.diff(np.sqrt(ldm.betas[1:]))[0], rtol=1e-9)
  d = schedules.ddpm_original()
  np.testing.assert_allclose([d.betas[1], d.betas[-1]], [1e-4, 0.02])
  assert d.alpha_bars[-1] < 1e-4 < ldm.alpha_bars[-1]


def test_q_sample_marginal_has_sqrt_forms():
  s = schedules.linear_ldm()
  t = 400
  x0 = jnp.full((20000, 1), 0.7)
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  xt = schedules.q_sample(s, x0, jnp.full((20000,), t), noise)
  ab = s.alpha_bars[t]
  np.testing.assert_allclose(float(xt.mean()), np.sqrt(ab) * 0.7, atol=0.02)
  np.testing.assert_allclose(float(xt.var()), 1 - ab, rtol=0.03)


def test_posterior_variance_and_lambdas():
  s = schedules.linear()
  ab = s.alpha_bars
  t = 10
  np.testing.assert_allclose(s.posterior_variance[t], (1 - ab[t - 1]) / (1 - ab[t]) * s.betas[t])
  assert np.all(np.diff(s.lambdas[1:]) < 0)  # SNR falls with t


def test_marginals_posterior_and_snr_from_the_one_step_chain():
  """Only q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t) is assumed: iterate it for
  the x0 coefficient c_t and the variance v_t of x_t | x0, then condition the joint
  Gaussian of (x_{t-1}, x_t) | x0 numerically (cov = sqrt(a_t) v_{t-1})."""
  for s in (schedules.linear(), schedules.linear_ldm(), schedules.linear(2000, 1e-6, 1e-2)):
    b = s.betas
    c, v = np.ones(len(b)), np.zeros(len(b))
    for t in range(1, len(b)):
      c[t], v[t] = np.sqrt(1 - b[t]) * c[t - 1], (1 - b[t]) * v[t - 1] + b[t]
    np.testing.assert_allclose(s.sqrt_alpha_bars, c, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bars[1:], np.sqrt(v[1:]), rtol=1e-9)
    post = [v[t - 1] - (np.sqrt(1 - b[t]) * v[t - 1]) ** 2 / v[t] for t in range(1, len(b))]
    np.testing.assert_allclose(s.posterior_variance[1:], post, rtol=1e-9, atol=1e-300)
    assert s.posterior_variance[1] == 0  # x_0 | x_1, x_0 is x_0
    np.testing.assert_allclose(s.lambdas[1:], np.log(c[1:] / np.sqrt(v[1:])), rtol=1e-9)


def test_training_timesteps_cover_exactly_1_to_T():
  """t ~ U{1..T}: t = 0 (clean input) never, t = T (pure noise) as often as any other."""
  T = 50
  t = np.asarray(losses.sample_timesteps(jax.random.PRNGKey(0), 200_000, T))
  counts = np.bincount(t, minlength=T + 2)
  assert counts[0] == 0 and counts[T + 1:].sum() == 0
  expect = len(t) / T
  np.testing.assert_array_less(np.abs(counts[1:T + 1] - expect), 5 * np.sqrt(expect))


def test_eps_loss_is_zero_for_the_true_noise_predictor():
  s = schedules.linear_ldm()
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
  cond = jnp.zeros_like(x0)
  rng = jax.random.PRNGKey(3)

  def oracle(net_in, t):  # recovers the noise from x_t because x0 is known
    xt = net_in[..., :3]
    a = jnp.asarray(s.sqrt_alpha_bars, jnp.float32)[t][:, None, None, None]
    b = jnp.asarray(s.sqrt_one_minus_alpha_bars, jnp.float32)[t][:, None, None, None]
    return (xt - a * x0) / b

  assert float(losses.conditional_eps_loss(oracle, s, x0, cond, rng)) < 1e-6
  zero = lambda net_in, t: jnp.zeros_like(net_in[..., :3])
  np.testing.assert_allclose(float(losses.conditional_eps_loss(zero, s, x0, cond, rng)), 1.0, atol=0.1)


def test_v_prediction_oracle_has_zero_loss_and_maps_back_to_the_true_eps():
  s = schedules.linear_ldm()
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3)) * 2 - 1
  cond = jnp.zeros_like(x0)
  rng = jax.random.PRNGKey(5)
  a_tab = jnp.asarray(s.sqrt_alpha_bars, jnp.float32)
  s_tab = jnp.asarray(s.sqrt_one_minus_alpha_bars, jnp.float32)

  def v_oracle(net_in, t):
    xt = net_in[..., :3]
    a, b = a_tab[t][:, None, None, None], s_tab[t][:, None, None, None]
    eps = (xt - a * x0) / b
    return a * eps - b * x0

  assert float(losses.conditional_loss(v_oracle, s, x0, cond, rng, "v")) < 1e-8
  # as_eps_fn turns the v-network into the eps the samplers expect.
  t = jnp.array([1, 10, 500, 1000])
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  xt = schedules.q_sample(s, x0, t, noise)
  eps_fn = losses.as_eps_fn(lambda x, tt: v_oracle(jnp.concatenate([x, cond], -1), tt.astype(jnp.int32)),
                            s, "v", lambda tt: jnp.asarray(s.alpha_bars, jnp.float32)[tt.astype(jnp.int32)])
  np.testing.assert_allclose(np.asarray(eps_fn(xt, t.astype(jnp.float32))), np.asarray(noise), atol=2e-4)


def test_x0_prediction_oracle_has_zero_loss_and_maps_back_to_the_true_eps():
  s = schedules.linear_ldm()
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3)) * 2 - 1
  cond = jnp.zeros_like(x0)
  oracle = lambda net_in, t: x0
  assert float(losses.conditional_loss(oracle, s, x0, cond, jax.random.PRNGKey(5), "x0")) == 0.0
  zero = lambda net_in, t: jnp.zeros_like(x0)
  np.testing.assert_allclose(float(losses.conditional_loss(zero, s, x0, cond, jax.random.PRNGKey(5), "x0")),
                             float(jnp.mean(x0 ** 2)), rtol=1e-6)
  t = jnp.array([1, 10, 500, 1000])
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  xt = schedules.q_sample(s, x0, t, noise)
  eps_fn = losses.as_eps_fn(lambda x, tt: oracle(None, tt), s, "x0",
                            lambda tt: jnp.asarray(s.alpha_bars, jnp.float32)[tt.astype(jnp.int32)])
  # at t=1, sqrt(1 - abar) ~ 0.04 scales float32 rounding of x_t up by 25
  np.testing.assert_allclose(np.asarray(eps_fn(xt, t.astype(jnp.float32))), np.asarray(noise), atol=2e-5 * 25)
