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
