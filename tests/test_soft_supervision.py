"""Soft supervision's math against closed forms (Monte Carlo with stated tolerances).

With d = mu - x_gt and no clipping, training-resampling's main term is |d| |1 - s z|
(s = sign d): E = E|1 + Z| |d| = (sqrt(2/pi) e^-1/2 + 1 - 2 Phi(-1)) |d| = 1.16663 |d|, and
its gradient in mu is s |1 - s z| (through e_gt, the official code) or sign(d - |d| z)
(e_gt stop-gradiented), expectation 2 Phi(1) - 1 = 0.68269 times s, reversed with
probability 1 - Phi(1) = 0.15866. Test-resampling's N-draw average is N(mu, sigma^2 / N).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.core import metrics
from jisp.losses import soft_supervision as ss


def phi(x):
  return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


E_ABS_1PZ = math.sqrt(2.0 / math.pi) * math.exp(-0.5) + 1.0 - 2.0 * phi(-1.0)
E_SIGN_SG = 2.0 * phi(1.0) - 1.0
P_REVERSED = 1.0 - phi(1.0)
N_MC = 400_000
NO_CLIP = dict(clip_min=0.0, clip_max=np.inf)


def test_closed_form_constants():
  assert E_ABS_1PZ == pytest.approx(1.1666309, abs=1e-7)
  assert E_SIGN_SG == pytest.approx(0.6826895, abs=1e-7)
  assert P_REVERSED == pytest.approx(0.1586553, abs=1e-7)


def _per_draw(d, stop_grad):
  """Loss and d/dmu of the main term for each of N_MC draws and each d (x_gt = 0.5)."""
  d = jnp.asarray(d, jnp.float32)
  x_gt = jnp.full_like(d, 0.5)
  z = jax.random.normal(jax.random.PRNGKey(0), (N_MC,) + d.shape, jnp.float32)

  def total(mu_b):  # mu broadcast per draw: the gradient of the sum is the per-draw one
    loss, aux = ss.train_resampling_loss(mu_b, None, x_gt, z, stop_grad_target=stop_grad,
                                         **NO_CLIP)
    return aux["main"] * mu_b.size, loss

  mu_b = jnp.broadcast_to(x_gt + d, z.shape)
  per_draw_loss = jnp.abs(mu_b - ss.resample_target(x_gt, jnp.abs(d), z))
  grads, _ = jax.grad(total, has_aux=True)(mu_b)
  return np.asarray(per_draw_loss), np.asarray(grads)


# Tolerances are 5 standard errors: sd(|1 + Z|) = 0.80, sd(s|1 - s z|) = 0.80 and
# sd(sign) = 0.73, over N_MC draws -> about 0.006 (relative) for the means.
D = np.array([0.2, -0.2, 0.03, -0.07], np.float32)
TOL_MEAN = 5 * 0.81 / math.sqrt(N_MC)


def test_train_resampling_expected_loss_and_gradient_through_e_gt():
  loss, grad = _per_draw(D, stop_grad=False)
  np.testing.assert_allclose(loss.mean(0) / np.abs(D), E_ABS_1PZ, atol=TOL_MEAN)
  np.testing.assert_allclose(grad.mean(0) / np.sign(D), E_ABS_1PZ, atol=TOL_MEAN)
  # an L1 gradient with a random positive multiplier, never against sign(d)
  assert np.all(grad * np.sign(D) >= 0)


def test_train_resampling_gradient_with_stop_gradient():
  loss, grad = _per_draw(D, stop_grad=True)
  np.testing.assert_allclose(loss.mean(0) / np.abs(D), E_ABS_1PZ, atol=TOL_MEAN)  # same value
  np.testing.assert_allclose(grad.mean(0) / np.sign(D), E_SIGN_SG, atol=TOL_MEAN)
  reversed_frac = np.mean(grad * np.sign(D) < 0, axis=0)
  np.testing.assert_allclose(reversed_frac, P_REVERSED,
                             atol=5 * math.sqrt(P_REVERSED * (1 - P_REVERSED) / N_MC))


def test_reparameterised_target_moments():
  n = 100_000
  x_gt = jnp.array([0.1, 0.5, 0.9], jnp.float32)
  e = jnp.array([0.01, 0.2, 0.05], jnp.float32)
  z = jax.random.normal(jax.random.PRNGKey(3), (n, 3), jnp.float32)
  xs = np.asarray(ss.resample_target(x_gt, e, z))
  np.testing.assert_allclose(xs.mean(0), x_gt, atol=4 * float(e.max()) / math.sqrt(n))
  np.testing.assert_allclose(xs.std(0) / np.asarray(e), 1.0, atol=4 / math.sqrt(2 * n))


def test_zero_noise_gives_the_clipped_l1():
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  mu, sig, x = (jax.random.uniform(kk, (2, 8, 8, 4)) for kk in k)
  loss, aux = ss.train_resampling_loss(mu, sig, x, jnp.zeros_like(x), alpha=0.0)
  assert float(loss) == pytest.approx(float(ss.plain_loss(mu, x)), rel=1e-6)
  assert float(aux["main"]) == pytest.approx(float(jnp.mean(
      jnp.clip(jnp.abs(mu - x), 2.0 ** -10, 1.0))), rel=1e-6)


def test_clipping_floor_and_ceiling_have_zero_gradient():
  u = jnp.array([0.0, 2.0 ** -12, -2.0 ** -11, 0.5, -0.25, 1.5, -3.0], jnp.float32)
  v = ss.clipped_l1(u)
  np.testing.assert_array_equal(np.asarray(v),
                                [2.0 ** -10, 2.0 ** -10, 2.0 ** -10, 0.5, 0.25, 1.0, 1.0])
  g = np.asarray(jax.grad(lambda t: jnp.sum(ss.clipped_l1(t)))(u))
  np.testing.assert_array_equal(g, [0, 0, 0, 1, -1, 0, 0])
  # the floor is configurable (FiveK's RAW has more than 10 bits)
  assert float(ss.clipped_l1(jnp.float32(2.0 ** -12), clip_min=2.0 ** -14)) == 2.0 ** -12


def _toy(seed=0, shape=(2, 6, 6, 4)):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.uniform(k[0], shape, minval=0.2, maxval=0.8)
  mu = x + 0.05 * jax.random.normal(k[1], shape)   # inside [0, 1]: no clipping
  sig = jax.random.uniform(k[2], shape, minval=0.0, maxval=0.2)
  z = jax.random.normal(k[3], shape)
  return mu, sig, x, z


def test_alpha_weights_the_sigma_term_and_its_target_is_e_gt():
  mu, sig, x, z = _toy()

  def grads(alpha):
    return jax.grad(lambda m, s: ss.train_resampling_loss(m, s, x, z, alpha)[0],
                    argnums=(0, 1))(mu, sig)

  g_mu0, g_sig0 = grads(0.0)
  g_mu1, g_sig1 = grads(1e-3)
  g_mu2, g_sig2 = grads(2e-3)
  assert float(jnp.abs(g_sig0).max()) == 0.0
  assert float(jnp.abs(g_sig1).max()) > 0.0
  np.testing.assert_allclose(np.asarray(g_sig2), 2 * np.asarray(g_sig1), rtol=1e-6)
  # alpha moves only the sigma head: the aux target e_gt carries no gradient into mu
  np.testing.assert_allclose(np.asarray(g_mu1), np.asarray(g_mu0), rtol=1e-6)
  _, aux = ss.train_resampling_loss(mu, sig, x, z)
  want = np.mean(np.clip(np.abs(np.asarray(sig) - np.abs(np.asarray(mu - x))), 2.0 ** -10, 1))
  assert float(aux["aux"]) == pytest.approx(want, rel=1e-5)
  not_x = np.mean(np.clip(np.abs(np.asarray(sig - x)), 2.0 ** -10, 1))
  assert abs(want - not_x) > 0.1   # the code's slip (sigma vs x_gt) would differ


def test_test_resampling_loss_value_and_gradient_switch():
  mu, sig, x, _ = _toy(1)
  loss, aux = ss.test_resampling_loss(mu, sig, x)
  l1 = lambda a: np.mean(np.clip(np.abs(np.asarray(a)), 2.0 ** -10, 1.0))
  assert float(aux["main"]) == pytest.approx(l1(mu - x), rel=1e-5)
  assert float(aux["aux"]) == pytest.approx(l1(sig - jnp.abs(mu - x)), rel=1e-5)
  assert float(loss) == pytest.approx(float(aux["main"] + aux["aux"]), rel=1e-6)

  def aux_grad(stop):  # d(sigma term)/d mu
    return jax.grad(lambda m: ss.test_resampling_loss(m, sig, x, stop_grad_target=stop)[1]["aux"])(mu)
  assert float(jnp.abs(aux_grad(False)).max()) > 0      # the code: e_gt pulled towards sigma
  assert float(jnp.abs(aux_grad(True)).max()) == 0


def test_resample_average_is_normal_with_variance_over_n():
  n_draws, seeds = 50, 4000
  mu = jnp.array([0.3, 0.5, 0.7], jnp.float32)
  sig = jnp.array([0.05, 0.2, 0.1], jnp.float32)
  z = jax.random.normal(jax.random.PRNGKey(5), (seeds, n_draws, 3), jnp.float32)
  avg = np.asarray(jax.vmap(lambda zz: ss.resample_average(mu, sig, zz))(z))
  sd = np.asarray(sig) / math.sqrt(n_draws)
  np.testing.assert_allclose(avg.mean(0), mu, atol=float(4 * sd.max() / math.sqrt(seeds)))
  np.testing.assert_allclose(avg.var(0) / sd ** 2, 1.0, atol=4 * math.sqrt(2 / seeds))
  # one draw of mu + sigma z / sqrt(N) has the same law: two-sample KS at level 1e-3
  one = np.asarray(ss.resample_mean(mu, sig, jax.random.normal(jax.random.PRNGKey(6),
                                                               (seeds, 3)), n_draws))
  crit = 1.95 * math.sqrt(2.0 / seeds)
  for c in range(3):
    a, b = np.sort(avg[:, c]), np.sort(one[:, c])
    grid = np.concatenate([a, b])
    ks = np.max(np.abs(np.searchsorted(a, grid, "right") / seeds -
                       np.searchsorted(b, grid, "right") / seeds))
    assert ks < crit, (c, ks, crit)
  # and the test is not vacuous: sigma z / sqrt(N) without the sqrt fails it
  wrong = np.sort(np.asarray(mu[1] + sig[1] * jax.random.normal(jax.random.PRNGKey(7), (seeds,))))
  grid = np.concatenate([np.sort(avg[:, 1]), wrong])
  ks = np.max(np.abs(np.searchsorted(np.sort(avg[:, 1]), grid, "right") / seeds -
                     np.searchsorted(wrong, grid, "right") / seeds))
  assert ks > crit


def test_zero_sigma_gives_clipped_mu():
  mu = jnp.array([-0.1, 0.25, 1.3], jnp.float32)
  z = jax.random.normal(jax.random.PRNGKey(0), (50, 3))
  np.testing.assert_array_equal(np.asarray(ss.resample_average(mu, jnp.zeros(3), z)),
                                [0.0, 0.25, 1.0])
  np.testing.assert_array_equal(np.asarray(ss.resample_mean(mu, jnp.zeros(3), z[0])),
                                [0.0, 0.25, 1.0])


def test_averaging_cannot_beat_mu():
  """E||mu + sigma zbar - x||^2 = ||mu - x||^2 + sum sigma^2 / N (no clipping active)."""
  mu, sig, x, _ = _toy(2)
  n = 50
  zs = jax.random.normal(jax.random.PRNGKey(9), (2000,) + mu.shape)
  mse = np.asarray(jax.vmap(lambda z: jnp.mean((ss.resample_mean(mu, sig, z, n) - x) ** 2))(zs))
  mse_mu = float(jnp.mean((mu - x) ** 2))
  extra = float(jnp.mean(sig ** 2)) / n
  # the excess over mu's error is sigma^2 / N: about 10 standard errors of the MC mean
  assert mse.mean() - mse_mu == pytest.approx(extra, rel=0.15)
  psnr_mu = float(metrics.psnr(mu, x))
  psnr_avg = np.asarray(jax.vmap(lambda z: metrics.psnr(ss.resample_mean(mu, sig, z, n), x))(zs))
  assert psnr_mu > psnr_avg.mean()
