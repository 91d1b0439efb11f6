"""The Domain Transform Diffusion Method (DTDM, DiffRAW, Yi et al. AAAI 2024).

A diffusion whose forward chain, besides adding noise, walks from the target y towards a
cheap estimate x of it, so that after s << T steps it reaches x_s = sqrt(ab_s) x +
sqrt(1 - ab_s) eps: sampling starts from the noised estimate and needs only s steps.

Notation (ab = alpha-bar, index = timestep as in jisp.diffusion.schedules, ab_0 = 1):

  gamma_s = sqrt(ab_s) / sqrt(1 - ab_s)
  m_0^t   = y + sqrt(1 - ab_t) / sqrt(ab_t) * gamma_s (x - y)           (paper Eq. 14)
  m_t     = sqrt(ab_t) y + sqrt(1 - ab_t) [gamma_s (x - y) + eps]         (Eq. 18, t in 1..s)
          = sqrt(ab_t) m_0^t + sqrt(1 - ab_t) eps,   so  m_s = sqrt(ab_s) x + sqrt(1-ab_s) eps.
  target  = gamma_s (x - y) + eps;  y_hat = (m_t - sqrt(1 - ab_t) f) / sqrt(ab_t)   (Eq. 19-21)

One forward step (Eq. 12-16 with the bars the extracted text lost):
  q(m_t | m_{t-1}) = N(sqrt(a_t) m_{t-1} + sqrt(ab_t) (m_0^t - m_0^{t-1}), (1 - a_t) I).
Eq. 16 as printed has sqrt(a_t) in front of (m_0^t - m_0^{t-1}); Eq. 12 needs sqrt(ab_{t-1})
(times sqrt(a_t) from Eq. 13 gives sqrt(ab_t)), and only that iterates to Eq. 17.

Reverse step. In u_t = m_t - sqrt(ab_t) m_0^t the chain is exactly a DDPM forward chain with
u_0 = m_0 - m_0^0 = 0, so q(m_{t'} | m_t, x, y) for any t' < t is the DDPM posterior in u.
With eps_u = u_t / sqrt(1 - ab_t) and sigma^2 = eta^2 * beta-tilde_{t->t'} (DDIM's form, which
for eta = 1 is exactly that posterior):

  m_{t'} = sqrt(ab_t') m_0^{t'} + sqrt(1 - ab_t' - sigma^2) eps_u + sigma z.

Plugging in y_hat (Eq. 21) for y and keeping the true x gives eps_u = f - gamma_s (x - y_hat)
and, for t' = t - 1 and eta = 1, the paper's Eq. 23-25 / Algorithm 2:

  m_{t-1} = [sqrt(1-ab_t)/sqrt(ab_t) lam_t - (1-a_t)/(sqrt(a_t) sqrt(1-ab_t))] f
          + [1/sqrt(a_t) - lam_t/sqrt(ab_t)] m_t + lam_t x + sigma_t z,
  lam_t   = gamma_s sqrt(1-ab_{t-1}) (1 - sqrt(a_t) sqrt(1-ab_{t-1}) / sqrt(1-ab_t)),
  sigma_t^2 = beta-tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t.

Differences from Algorithm 2 as extracted: (1) the coefficient of m_t is printed as
1/sqrt(ab_t) - lam_t/sqrt(a_t), with a and ab swapped; the derivation (and the oracle test:
a network that returns the exact target must give back y) needs 1/sqrt(a_t) - lam_t/sqrt(ab_t).
The coefficient of f and lam_t agree with the print. (2) sigma_t is left unspecified in the
paper; we use the posterior's beta-tilde (eta = 1) and allow eta in [0, 1] (eta = 0 is a
deterministic DDIM-style DTDM). (3) The last step (t' = 0) returns y_hat itself, as the
posterior mean does (the paper says the same in words). (4) The strided reverse (fewer than
s network calls) is the same posterior between non-adjacent times; the paper has none.

The sampler is one `lax.scan` over a numpy table computed once in float64 (like
jisp.diffusion.samplers): each row is  m <- c_m m + c_f f(m, t) + c_x x + sigma z.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jisp.diffusion.samplers import normal_like
from jisp.diffusion.schedules import Schedule


# ---------------------------------------------------------------------------- process

def check_s(schedule: Schedule, s) -> int:
  s = int(s)
  if not 1 <= s <= schedule.num_timesteps:
    raise ValueError(f"dtdm: s={s} outside [1, T={schedule.num_timesteps}]")
  return s


def gamma_s(schedule: Schedule, s: int) -> float:
  """gamma_s = sqrt(ab_s) / sqrt(1 - ab_s) (float64)."""
  s = check_s(schedule, s)
  return float(schedule.sqrt_alpha_bars[s] / schedule.sqrt_one_minus_alpha_bars[s])


def _bcast(table, t, like):
  v = jnp.asarray(table, jnp.float32)[t]
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def m0_t(schedule: Schedule, s: int, x, y, t):
  """m_0^t = y + sqrt(1 - ab_t)/sqrt(ab_t) gamma_s (x - y); t an int array (B,) or scalar."""
  k = schedule.sqrt_one_minus_alpha_bars / schedule.sqrt_alpha_bars
  return y + _bcast(k, t, y) * gamma_s(schedule, s) * (x - y)


def training_target(schedule: Schedule, s: int, x, y, noise):
  """gamma_s (x - y) + eps (Eq. 19): what the network f(m_t, ...) learns to output."""
  return gamma_s(schedule, s) * (x - y) + noise


def q_sample(schedule: Schedule, s: int, x, y, t, noise):
  """m_t = sqrt(ab_t) y + sqrt(1 - ab_t) [gamma_s (x - y) + eps] (Eq. 18)."""
  a = _bcast(schedule.sqrt_alpha_bars, t, y)
  b = _bcast(schedule.sqrt_one_minus_alpha_bars, t, y)
  return a * y + b * training_target(schedule, s, x, y, noise)


def start_state(schedule: Schedule, s: int, x, noise):
  """m_s = x_s = sqrt(ab_s) x + sqrt(1 - ab_s) eps: where sampling begins (called with a
  time below the model's s, the noised estimate the paper's test protocol starts from)."""
  s = check_s(schedule, s)
  return (float(schedule.sqrt_alpha_bars[s]) * x
          + float(schedule.sqrt_one_minus_alpha_bars[s]) * noise)


def predict_y(schedule: Schedule, m_t, f, t):
  """y_hat = (m_t - sqrt(1 - ab_t) f) / sqrt(ab_t) (Eq. 21)."""
  a = _bcast(schedule.sqrt_alpha_bars, t, m_t)
  b = _bcast(schedule.sqrt_one_minus_alpha_bars, t, m_t)
  return (m_t - b * f) / a


def forward_step_mean(schedule: Schedule, s: int, m_prev, x, y, t):
  """Mean of q(m_t | m_{t-1}, x, y): sqrt(a_t) m_{t-1} + sqrt(ab_t)(m_0^t - m_0^{t-1})."""
  t = jnp.asarray(t)
  sa = _bcast(np.sqrt(schedule.alphas), t, m_prev)
  sab = _bcast(schedule.sqrt_alpha_bars, t, m_prev)
  return sa * m_prev + sab * (m0_t(schedule, s, x, y, t) - m0_t(schedule, s, x, y, t - 1))


def forward_step(schedule: Schedule, s: int, m_prev, x, y, t, noise):
  """One draw of q(m_t | m_{t-1}, x, y) (Eq. 15, corrected mean), variance 1 - a_t."""
  sb = _bcast(np.sqrt(schedule.betas), jnp.asarray(t), m_prev)
  return forward_step_mean(schedule, s, m_prev, x, y, t) + sb * noise


def draw(rng, shape, s: int) -> dict:
  """The objective's random draws for a batch of y of `shape`: {"t" ~ U{1..s}, "noise"}."""
  t_rng, n_rng = jax.random.split(rng)
  return {"t": jax.random.randint(t_rng, (shape[0],), 1, s + 1),
          "noise": jax.random.normal(n_rng, shape, jnp.float32)}


def loss(f_fn, schedule: Schedule, s: int, x, y, cond, rng, draws=None):
  """E_{t ~ U{1..s}, eps} || f(concat[m_t, cond], t) - (gamma_s (x - y) + eps) ||^2 (Eq. 20).

  Mean over every element, so the value does not depend on how the batch is sharded.
  draws: `draw(rng, y.shape, s)` made beforehand (drawn from rng when None).
  """
  s = check_s(schedule, s)
  d = draw(rng, y.shape, s) if draws is None else draws
  t, noise = d["t"], d["noise"].astype(y.dtype)
  m_t = q_sample(schedule, s, x, y, t, noise)
  f = f_fn(jnp.concatenate([m_t, cond], axis=-1), t)
  return jnp.mean(jnp.square(f - training_target(schedule, s, x, y, noise)))


# The network's output: "f", the paper's target gamma_s (x - y) + eps (Eq. 19-20); or
# "residual", r with y_hat = x + r, trained on || x + r - y ||^2 (x0-style weighting). The
# sampler is the same posterior either way: a residual is read as the f it implies (f_of).
# A zero residual network is the estimate x at every step, whatever the noise.
PREDICTIONS = ("f", "residual")


def check_prediction(prediction: str) -> str:
  if prediction not in PREDICTIONS:
    raise ValueError(f"dtdm: prediction must be one of {PREDICTIONS}, got {prediction!r}")
  return prediction


def f_of(schedule: Schedule, m_t, y_hat, t):
  """The f that Eq. 21 maps to y_hat at (m_t, t): (m_t - sqrt(ab_t) y_hat) / sqrt(1 - ab_t)."""
  a = _bcast(schedule.sqrt_alpha_bars, t, m_t)
  b = _bcast(schedule.sqrt_one_minus_alpha_bars, t, m_t)
  return (m_t - a * y_hat) / b


def residual_loss(r_fn, schedule: Schedule, s: int, x, y, cond, rng, draws=None):
  """E_{t ~ U{1..s}, eps} || x + r(concat[m_t, cond], t) - y ||^2: the same m_t as `loss`,
  the network's output read as a residual over the estimate x (mean over every element)."""
  s = check_s(schedule, s)
  d = draw(rng, y.shape, s) if draws is None else draws
  t, noise = d["t"], d["noise"].astype(y.dtype)
  m_t = q_sample(schedule, s, x, y, t, noise)
  r = r_fn(jnp.concatenate([m_t, cond], axis=-1), t)
  return jnp.mean(jnp.square(x + r - y))


# ---------------------------------------------------------------------------- reverse

def reverse_coefficients(schedule: Schedule, s: int, t: int, t_prev: int, eta: float = 1.0):
  """(c_m, c_f, c_x, sigma) with m_{t_prev} = c_m m_t + c_f f + c_x x + sigma z (float64).

  f is the network output at (m_t, t); y_hat from Eq. 21 stands in for y in the posterior
  q(m_{t_prev} | m_t, x, y). See the module docstring for the derivation.
  """
  s = check_s(schedule, s)
  t, t_prev = int(t), int(t_prev)
  if not 0 <= t_prev < t <= s:
    raise ValueError(f"dtdm: need 0 <= t_prev < t <= s, got t={t} t_prev={t_prev} s={s}")
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"dtdm: eta must be in [0, 1], got {eta}")
  ab = schedule.alpha_bars
  g = gamma_s(schedule, s)
  A, S = np.sqrt(ab[t]), np.sqrt(1 - ab[t])
  Ap, Sp = np.sqrt(ab[t_prev]), np.sqrt(1 - ab[t_prev])
  beta_tilde = (1 - ab[t_prev]) / (1 - ab[t]) * (1 - ab[t] / ab[t_prev])
  sigma = eta * np.sqrt(beta_tilde)
  Dp = np.sqrt(max(1 - ab[t_prev] - sigma ** 2, 0.0))
  # m' = Ap y_hat + Sp g (x - y_hat) + Dp (f - g (x - y_hat)) + sigma z, y_hat = (m - S f)/A
  lam = g * (Sp - Dp)                      # = lambda_t of Eq. 25 when t_prev = t - 1, eta = 1
  K = Ap - lam                             # coefficient of y_hat
  return K / A, Dp - K * S / A, lam, sigma


def reverse_step(schedule: Schedule, s: int, m_t, f, x, t: int, t_prev: int, eta=1.0, z=None):
  """m_{t_prev} from m_t, the network output f and the estimate x (z=None: the mean)."""
  c_m, c_f, c_x, sigma = reverse_coefficients(schedule, s, t, t_prev, eta)
  out = c_m * m_t + c_f * f + c_x * x
  return out if z is None else out + sigma * z


def timesteps(s: int, num_steps=None) -> np.ndarray:
  """Decreasing integer grid [s, ..., 0] with num_steps (default s) evaluations.

  The "trailing" spacing round(linspace(s, 0, n+1)) puts the first call exactly at s, where
  m_s lives, and lands on 0.
  """
  n = s if num_steps is None else int(num_steps)
  if not 1 <= n <= s:
    raise ValueError(f"dtdm: num_steps={num_steps} must be in [1, s={s}]")
  return np.round(np.linspace(s, 0, n + 1)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Plan:
  """One row per network evaluation: m <- c_m m + c_f f(m, t) + c_x x + sigma z."""
  t: np.ndarray
  c_m: np.ndarray
  c_f: np.ndarray
  c_x: np.ndarray
  sigma: np.ndarray

  def __len__(self):
    return len(self.t)


def _check_start(s: int, start_step) -> int:
  t0 = s if start_step is None else int(start_step)
  if not 1 <= t0 <= s:
    raise ValueError(f"dtdm: start_step={start_step} must be in [1, s={s}]")
  return t0


def plan(schedule: Schedule, s: int, *, num_steps=None, grid=None, eta=1.0,
         noise=True, start_step=None) -> Plan:
  """The sampler's table. `grid` (decreasing ints from start_step, default s, e.g.
  [s, ..., 0]) overrides num_steps; a grid ending above 0 stops there (tests read the chain
  mid-way). start_step < s begins the reverse chain of the s-model at that time (DiffRAW's
  test protocol: 93 noising and 93 reverse steps with s = 100). `noise=False` keeps eta's
  coefficients but sets z = 0 (Algorithm 2 without its noise)."""
  s = check_s(schedule, s)
  t0 = _check_start(s, start_step)
  g = timesteps(t0, num_steps) if grid is None else np.asarray(grid, np.int64)
  if g.ndim != 1 or len(g) < 2 or g[0] != t0 or not np.all(np.diff(g) < 0) or g[-1] < 0:
    raise ValueError(f"dtdm: grid must decrease strictly from start_step={t0} to >= 0, "
                     f"got {g}")
  rows = [reverse_coefficients(schedule, s, t, tp, eta) for t, tp in zip(g[:-1], g[1:])]
  c_m, c_f, c_x, sig = (np.asarray(c, np.float64) for c in zip(*rows))
  return Plan(t=g[:-1].astype(np.float64), c_m=c_m, c_f=c_f, c_x=c_x,
              sigma=sig if noise else np.zeros_like(sig))


def run_plan(f_fn, p: Plan, m_init, x, key=None):
  """One lax.scan over the plan. f_fn(m, t) -> f with t float32 (B,) in timestep units."""
  m_init = jnp.asarray(m_init)
  dtype = jnp.promote_types(m_init.dtype, jnp.float32)
  noisy = bool(np.any(p.sigma > 0))
  if noisy and key is None:
    raise ValueError("dtdm: this plan adds noise and needs a PRNG key")
  col = lambda c: jnp.asarray(getattr(p, c), dtype)
  xs = {"t": jnp.asarray(p.t, jnp.float32), "c_m": col("c_m"), "c_f": col("c_f"),
        "c_x": col("c_x")}
  if noisy:
    xs.update(sigma=col("sigma"), key=jax.random.split(key, len(p)))
  batch_index = (slice(None),) + (0,) * (m_init.ndim - 1)
  x = jnp.asarray(x, dtype)

  def step(m, r):
    # t shaped like m's batch axis so it inherits the batch sharding (as in samplers.py).
    t = jnp.full_like(m[batch_index], r["t"], dtype=jnp.float32)
    out = r["c_m"] * m + r["c_f"] * f_fn(m, t).astype(dtype) + r["c_x"] * x
    if noisy:
      out = out + r["sigma"] * normal_like(r["key"], out)
    return out, None

  m, _ = jax.lax.scan(step, m_init.astype(dtype), xs)
  return m.astype(m_init.dtype)


def sample(f_fn, schedule: Schedule, s: int, x, key, *, num_steps=None, grid=None, eta=1.0,
           noise=True, m_init=None, start_step=None):
  """DTDM sampling: m_{t0} = sqrt(ab_t0) x + sqrt(1-ab_t0) eps, then `num_steps` (default
  t0) reverse steps to m_0 = y_hat; t0 = start_step, default s (the paper's Algorithm 2;
  t0 < s is its test protocol, "noising and iteration steps" fewer than s). x is the
  estimate (model range), f_fn closes over the conditions. `m_init` replaces the random
  start (tests)."""
  t0 = _check_start(check_s(schedule, s), start_step)
  if m_init is None:
    if key is None:
      raise ValueError("dtdm: sampling needs a PRNG key for its start state")
    key, k0 = jax.random.split(key)
    m_init = start_state(schedule, t0, x, normal_like(k0, jnp.asarray(x)))
  p = plan(schedule, s, num_steps=num_steps, grid=grid, eta=eta, noise=noise,
           start_step=t0)
  return run_plan(f_fn, p, m_init, x, key)
