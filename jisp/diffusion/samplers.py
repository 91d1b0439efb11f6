"""Compiled diffusion samplers: DDPM, DDIM, DPM-Solver (singlestep) and DPM-Solver++ (2M).

Network convention: `eps_fn(x_t, t) -> eps_hat`, x_t of shape (B, ...) and t a float32 array
of shape (B,) in timestep units (1..T; DPM-Solver passes non-integer t). Conditioning is
closed over by the caller.

Design: every sampler is a *plan* -- a numpy table with one row per network evaluation,
computed once in float64 from the schedule -- run by one shared `lax.scan` (`_run_plan`).
Nothing in the loop depends on the host, so a whole sampler jits into one computation:

    f = jax.jit(lambda params, cond, x, key: samplers.sample(
        "dpm_solver", lambda x, t: net(params, cond, x, t), schedule, x, key,
        num_steps=20, order=3))

Each row reads (the row's columns in brackets):
    eps = eps_fn(x_eval, [t])
    m   = [p] * x_eval + [q] * eps              # model output: eps (p=0,q=1) or x0-prediction
    out = [a] * x_base + [u] * m + [v] * mem + [sigma] * z
    mem <- m if [store];  x_base <- out if [end];  x_eval <- out
x_base is the state at the start of a (possibly multi-stage) step, mem one remembered model
output. DDPM/DDIM rows are plain one-stage steps; a singlestep DPM-Solver step of order k is
k rows; a DPM-Solver++(2M) row remembers the previous data prediction.

Continuous time (DPM-Solver, as the official `NoiseScheduleVP('discrete')`): log alpha(t) is
piecewise linear in t between the discrete points t = 1..T (official t_n = n/N; here t is in
timestep units, so the network sees the same t as in training). We add the point t=0,
log alpha = 0 (ab_0 = 1), which only matters in [0, 1] where DPM-Solver never goes.
Like the official code, DPM-Solver stops at t=1 (x_1 still holds noise of std sqrt(beta_1));
`denoise_to_zero=True` spends one more evaluation to return the x0-prediction at t=1.

Step spacing: DDIM defaults to diffusers' "trailing" grid (first evaluation exactly at
start_step); spacing="leading" is the original DDIM grid (what the DDPM-for-ISP paper's DDIM
baseline ran). Both DPM-Solvers default to skip="logSNR" (equal lambda steps; what the
official code uses to reproduce the DPM-Solver paper): with the linear 0.0015..0.0195
schedule lambda rises steeply near t=1, and "time_uniform" leaves one large final lambda
step there (tests/test_samplers.py holds the Gaussian oracle to that ordering).

Paper / official-code settings and the keyword that selects each (default first):
  DDPM        variance="beta_tilde" | "beta" (Ho et al.'s Sigma_t = beta_t, the ISP paper)
  DDIM        spacing="trailing" | "leading" (original DDIM); eta=0
  DPM-Solver  order=3, skip="logSNR" | "time_uniform" | "time_quadratic",
              method="singlestep" | "singlestep_fixed", denoise_to_zero=False (official)
  DPM-Solver++ skip, lower_order_final=True, denoise_to_zero=False
  all         sample(..., clip_x0=False): clip the implied x0 to [-1, 1] (Ho et al.'s
              clip_denoised); original DDIM and official DPM-Solver do not clip.
The official `NoiseScheduleVP('discrete')` clips lambda at -5.1 since 2023-04 (after the
DDPM-for-ISP paper); we do not, which only matters for schedules whose lambda_T < -5.1
(beta-linear 0.0015..0.0195, not LDM's sqrt-linear one).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jisp.diffusion.schedules import Schedule

SKIPS = ("time_uniform", "logSNR", "time_quadratic")
NAMES = ("ddpm", "ddim", "dpm_solver", "dpm_solver_pp")


# ---------------------------------------------------------------------------- continuous time

def _log_alpha_table(schedule: Schedule):
  t = np.arange(schedule.num_timesteps + 1, dtype=np.float64)
  la = np.concatenate([[0.0], schedule.log_alpha[1:]])
  return t, la


def continuous_log_alpha(schedule: Schedule, t):
  """log alpha(t) = 0.5 log ab(t), piecewise linear in t; numpy in, numpy out; jax in, jax out."""
  grid, la = _log_alpha_table(schedule)
  if isinstance(t, jax.Array):
    # The grid is the integers 0..T, so interpolate by floor + gather with an explicit output
    # sharding: jnp.interp and plain indexing fail on t sharded over an explicit-axes mesh.
    table = jnp.asarray(la, t.dtype)
    i = jnp.clip(jnp.floor(t), 0, len(la) - 2).astype(jnp.int32)
    w = jnp.clip(t - i, 0, 1)
    take = lambda j: table.at[j].get(out_sharding=jax.typeof(t).sharding)
    return take(i) * (1 - w) + take(i + 1) * w
  return np.interp(np.asarray(t, np.float64), grid, la)


def continuous_alpha_bar(schedule: Schedule, t):
  """ab(t) = exp(2 log alpha(t)); equals schedule.alpha_bars at integer t."""
  la = continuous_log_alpha(schedule, t)
  return jnp.exp(2 * la) if isinstance(la, jax.Array) else np.exp(2 * la)


def _sigma(log_alpha):
  return np.sqrt(-np.expm1(2 * log_alpha))


def t_to_lambda(schedule: Schedule, t) -> np.ndarray:
  """Half log-SNR lambda(t) = log alpha - log sigma (numpy float64)."""
  la = continuous_log_alpha(schedule, t)
  with np.errstate(divide="ignore"):
    return la - 0.5 * np.log(-np.expm1(2 * la))


def lambda_to_t(schedule: Schedule, lam) -> np.ndarray:
  """Inverse of t_to_lambda: log alpha = -0.5 log(1 + e^{-2 lambda}), then invert the
  (strictly decreasing) piecewise-linear log alpha(t)."""
  grid, la = _log_alpha_table(schedule)
  target = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
  return np.interp(target, la[::-1], grid[::-1])


def time_steps(schedule: Schedule, skip: str, t_start: float, t_end: float, n: int) -> np.ndarray:
  """n+1 decreasing times from t_start to t_end (official `get_time_steps`)."""
  if skip == "time_uniform":
    ts = np.linspace(t_start, t_end, n + 1)
  elif skip == "logSNR":
    lam = np.linspace(t_to_lambda(schedule, t_start), t_to_lambda(schedule, t_end), n + 1)
    ts = lambda_to_t(schedule, lam)
  elif skip == "time_quadratic":
    ts = np.linspace(np.sqrt(t_start), np.sqrt(t_end), n + 1) ** 2
  else:
    raise ValueError(f"samplers: unknown skip {skip!r} (expected one of {SKIPS})")
  ts[0], ts[-1] = t_start, t_end  # exact end points despite the lambda round trip
  return ts


# ---------------------------------------------------------------------------- plan + engine

@dataclasses.dataclass(frozen=True)
class Plan:
  """One row per network evaluation (numpy arrays of equal length; see module docstring)."""
  t: np.ndarray
  a: np.ndarray
  u: np.ndarray
  v: np.ndarray
  p: np.ndarray
  q: np.ndarray
  sigma: np.ndarray
  store: np.ndarray
  end: np.ndarray

  def __len__(self):
    return len(self.t)


def _plan(rows) -> Plan:
  """rows: list of dicts; missing keys take the plain eps-prediction one-stage defaults."""
  default = dict(a=0.0, u=0.0, v=0.0, p=0.0, q=1.0, sigma=0.0, store=False, end=True)
  cols = {k: [] for k in ("t",) + tuple(default)}
  for r in rows:
    for k in cols:
      cols[k].append(r[k] if k in r else default[k])
  as_np = {k: np.asarray(c, bool if k in ("store", "end") else np.float64)
           for k, c in cols.items()}
  if not as_np["end"][-1]:
    raise AssertionError("samplers: a plan must end a step on its last row")
  return Plan(**as_np)


def normal_like(key, x):
  """Standard normal noise of the shape, dtype (and explicit sharding) of x."""
  # With an explicit-axes mesh, draw the noise already sharded like x (no replicated copy).
  sharding = jax.typeof(x).sharding
  if any(s is not None for s in sharding.spec):
    return jax.random.normal(key, x.shape, x.dtype, out_sharding=sharding)
  return jax.random.normal(key, x.shape, x.dtype)


def _run_plan(eps_fn, plan: Plan, x_init, key):
  """The one scan every sampler runs. Columns that are constant are folded statically."""
  x_init = jnp.asarray(x_init)
  if x_init.ndim < 1:
    raise ValueError("samplers: x_init must have a batch dimension")
  dtype = jnp.promote_types(x_init.dtype, jnp.float32)
  noisy = bool(np.any(plan.sigma > 0))
  if noisy and key is None:
    raise ValueError("samplers: this sampler adds noise and needs a PRNG key")
  data_pred = bool(np.any(plan.p != 0) or np.any(plan.q != 1))
  uses_mem = bool(np.any(plan.v != 0))
  multi_stage = not bool(np.all(plan.end))

  f = lambda c: jnp.asarray(getattr(plan, c), dtype)
  xs = {"t": jnp.asarray(plan.t, jnp.float32), "a": f("a"), "u": f("u")}
  if data_pred:
    xs.update(p=f("p"), q=f("q"))
  if uses_mem:
    xs.update(v=f("v"), store=jnp.asarray(plan.store))
  if multi_stage:
    xs.update(end=jnp.asarray(plan.end))
  if noisy:
    xs.update(sigma=f("sigma"), key=jax.random.split(key, len(plan)))

  batch_index = (slice(None),) + (0,) * (x_init.ndim - 1)

  def step(carry, r):
    x_base, x_eval, mem = carry
    # t shaped (B,) like x's batch axis, so it inherits x's batch sharding.
    t = jnp.full_like(x_eval[batch_index], r["t"], dtype=jnp.float32)
    eps = eps_fn(x_eval, t)
    m = (r["p"] * x_eval + r["q"] * eps) if data_pred else eps.astype(dtype)
    out = r["a"] * x_base + r["u"] * m
    if uses_mem:
      out = out + r["v"] * mem
      mem = jnp.where(r["store"], m, mem)
    if noisy:
      out = out + r["sigma"] * normal_like(r["key"], out)
    x_base = jnp.where(r["end"], out, x_base) if multi_stage else out
    return (x_base, out, mem), None

  x = x_init.astype(dtype)
  mem = jnp.zeros_like(x) if uses_mem else None
  (x, _, _), _ = jax.lax.scan(step, (x, x, mem), xs)
  return x.astype(x_init.dtype)


# ---------------------------------------------------------------------------- DDPM

def _check_start(schedule, start_step, lo=1):
  T = schedule.num_timesteps
  s = T if start_step is None else int(start_step)
  if not lo <= s <= T:
    raise ValueError(f"samplers: start_step={start_step} outside [{lo}, {T}]")
  return s


def ddpm_plan(schedule: Schedule, *, start_step=None, variance="beta_tilde") -> Plan:
  s = _check_start(schedule, start_step)
  if variance == "beta_tilde":
    var = schedule.posterior_variance
  elif variance == "beta":
    var = schedule.betas
  else:
    raise ValueError(f"ddpm: variance must be 'beta_tilde' or 'beta', got {variance!r}")
  b, al, ab = schedule.betas, schedule.alphas, schedule.alpha_bars
  rows = []
  for t in range(s, 0, -1):
    rows.append(dict(t=t, a=1 / np.sqrt(al[t]), u=-b[t] / (np.sqrt(al[t]) * np.sqrt(1 - ab[t])),
                     sigma=np.sqrt(var[t]) if t > 1 else 0.0))  # x_0 is the mean: no noise
  return _plan(rows)


def ddpm_sample(eps_fn, schedule: Schedule, x_init, key, *, start_step=None,
                variance="beta_tilde"):
  """Ancestral DDPM (Ho et al.) from x_{start_step} (default T) down to x_0, one eval/step."""
  return _run_plan(eps_fn, ddpm_plan(schedule, start_step=start_step, variance=variance),
                   x_init, key)


# ---------------------------------------------------------------------------- DDIM

SPACINGS = ("trailing", "leading")


def ddim_timesteps(schedule: Schedule, *, num_steps=None, start_step=None, timesteps=None,
                   spacing="trailing"):
  """Decreasing integer grid [t_N, ..., t_1, 0]; evaluations happen at all but the 0.

  spacing="trailing" (default, diffusers' "trailing"): round(linspace(start, 0, N+1)), so
    the first evaluation is exactly at start_step (where x_init lives).
  spacing="leading" (diffusers' "leading"; original DDIM's `range(0, T, T // N)`, 0-indexed,
    whenever N divides T, e.g. the DDPM-for-ISP paper's 200 of 1000): 1 + k * (start // N)
    for k = N-1..0, so the last evaluation is at t=1 and the first at or below start_step;
    x_init is taken as the state there (as the original code feeds x_T at t = T - T//N + 1).
  """
  T = schedule.num_timesteps
  if spacing not in SPACINGS:
    raise ValueError(f"ddim: spacing must be one of {SPACINGS}, got {spacing!r}")
  if timesteps is not None:
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or len(ts) == 0 or not np.all(ts == np.round(ts)):
      raise ValueError("ddim: timesteps must be a non-empty 1-D sequence of integers")
    ts = ts.astype(np.int64)
    if not (np.all(np.diff(ts) < 0) and ts[-1] >= 1 and ts[0] <= T):
      raise ValueError(f"ddim: timesteps must decrease strictly within [1, {T}]")
    if start_step is not None and int(start_step) != ts[0]:
      raise ValueError(f"ddim: start_step={start_step} but timesteps start at {ts[0]}")
    if num_steps is not None and int(num_steps) != len(ts):
      raise ValueError(f"ddim: num_steps={num_steps} but {len(ts)} timesteps given")
    return np.concatenate([ts, [0]])
  s = _check_start(schedule, start_step)
  if num_steps is None or not 1 <= int(num_steps) <= s:
    raise ValueError(f"ddim: num_steps={num_steps} must be in [1, start_step={s}]")
  n = int(num_steps)
  if spacing == "leading":
    return np.concatenate([1 + np.arange(n - 1, -1, -1) * (s // n), [0]]).astype(np.int64)
  return np.round(np.linspace(s, 0, n + 1)).astype(np.int64)


def ddim_plan(schedule: Schedule, *, num_steps=None, eta=0.0, start_step=None,
              timesteps=None, spacing="trailing") -> Plan:
  if not eta >= 0:
    raise ValueError(f"ddim: eta must be >= 0, got {eta}")
  grid = ddim_timesteps(schedule, num_steps=num_steps, start_step=start_step,
                        timesteps=timesteps, spacing=spacing)
  ab = schedule.alpha_bars
  rows = []
  for t, tp in zip(grid[:-1], grid[1:]):
    a_t, a_p = ab[t], ab[tp]
    sig = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
    dir2 = 1 - a_p - sig ** 2
    if dir2 < -1e-12:
      raise ValueError(f"ddim: eta={eta} too large (negative direction variance at t={t})")
    # x_p = sqrt(a_p) x0_hat + sqrt(1 - a_p - sig^2) eps + sig z,
    # x0_hat = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
    rows.append(dict(t=t, a=np.sqrt(a_p / a_t),
                     u=np.sqrt(max(dir2, 0.0)) - np.sqrt(a_p) * np.sqrt(1 - a_t) / np.sqrt(a_t),
                     sigma=sig))
  return _plan(rows)


def ddim_sample(eps_fn, schedule: Schedule, x_init, key=None, *, num_steps=None, eta=0.0,
                start_step=None, timesteps=None, spacing="trailing"):
  """DDIM (Song et al.) on a step subsequence (see `ddim_timesteps` for the grid); eta=0
  is deterministic (key unused)."""
  return _run_plan(eps_fn, ddim_plan(schedule, num_steps=num_steps, eta=eta,
                                     start_step=start_step, timesteps=timesteps,
                                     spacing=spacing), x_init, key)


def ddim_invert_plan(schedule: Schedule, *, num_steps=None, end_step=None,
                     timesteps=None, spacing="trailing") -> Plan:
  grid = ddim_timesteps(schedule, num_steps=num_steps, start_step=end_step,
                        timesteps=timesteps, spacing=spacing)[::-1]
  ab = schedule.alpha_bars
  rows = []
  for t, tn in zip(grid[:-1], grid[1:]):
    # eps is evaluated at the *target* label: the forward step tn -> t used eps(x_tn, tn),
    # so this is its explicit approximation (and t=0 has no network label).
    a_t, a_n = ab[t], ab[tn]
    rows.append(dict(t=tn, a=np.sqrt(a_n / a_t),
                     u=np.sqrt(1 - a_n) - np.sqrt(a_n) * np.sqrt(1 - a_t) / np.sqrt(a_t)))
  return _plan(rows)


def ddim_invert(eps_fn, schedule: Schedule, x0, *, num_steps=None, end_step=None,
                timesteps=None, spacing="trailing"):
  """Deterministic DDIM run backwards, x_0 -> x_{end_step}, on the grid `ddim_sample`
  uses (same num_steps/timesteps/spacing), so ddim_sample(ddim_invert(x0)) ~= x0."""
  return _run_plan(eps_fn, ddim_invert_plan(schedule, num_steps=num_steps, end_step=end_step,
                                            timesteps=timesteps, spacing=spacing), x0, None)


# ---------------------------------------------------------------------------- DPM-Solver

def singlestep_orders(num_steps: int, order: int, method: str = "singlestep"):
  """Per-step orders, as official DPM-Solver.

  "singlestep" (DPM-Solver-fast, the paper's setting): all NFE are used; order 3 gives
    [3]*(K-2)+[2,1] / [3]*(K-1)+[1] / [3]*(K-1)+[2] for NFE % 3 = 0 / 1 / 2 (20 NFE:
    six order-3 steps + one order-2 step).
  "singlestep_fixed": NFE // order steps, all of `order` (NFE rounded down to a multiple).
  """
  if order not in (1, 2, 3):
    raise ValueError(f"dpm_solver: order must be 1, 2 or 3, got {order}")
  n = int(num_steps)
  if n < 1:
    raise ValueError(f"dpm_solver: num_steps (NFE) must be >= 1, got {num_steps}")
  if method == "singlestep_fixed":
    if n < order:
      raise ValueError(f"dpm_solver: singlestep_fixed needs num_steps >= order ({order})")
    return [order] * (n // order)
  if method != "singlestep":
    raise ValueError(f"dpm_solver: method must be 'singlestep' or 'singlestep_fixed', got "
                     f"{method!r}")
  if order == 3:
    k = n // 3 + 1
    return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[n % 3]
  if order == 2:
    return [2] * (n // 2) + [1] * (n % 2)
  return [1] * n


def _cont_start(schedule, start_step):
  s = _check_start(schedule, start_step, lo=2)
  return float(s), 1.0  # official discrete range: t in [1/N, 1] == [1, T] in timestep units


def _la_sig_lam(schedule, t):
  la = float(continuous_log_alpha(schedule, t))
  return la, float(_sigma(la)), float(t_to_lambda(schedule, t))


def _stage(t_eval, a, b, c=0.0, first=False, end=False):
  """One singlestep stage, official form: out = a x_s + b eps_s + c (eps_now - eps_s).

  In plan columns u = c, v = b - c; the first stage stores eps_s (and has c = 0, u = b)."""
  if first:
    return dict(t=t_eval, a=a, u=b, v=0.0, store=True, end=end)
  return dict(t=t_eval, a=a, u=c, v=b - c, store=False, end=end)


def dpm_solver_plan(schedule: Schedule, *, num_steps, order=3, start_step=None,
                    skip="logSNR", method="singlestep", denoise_to_zero=False) -> Plan:
  t_start, t_end = _cont_start(schedule, start_step)
  orders = singlestep_orders(num_steps, order, method)
  if skip == "logSNR" or method == "singlestep_fixed":
    outer = time_steps(schedule, skip, t_start, t_end, len(orders))
  else:  # official: the NFE grid, keeping the points where steps begin and end
    outer = time_steps(schedule, skip, t_start, t_end, sum(orders))
    outer = outer[np.cumsum([0] + orders)]
  rows = []
  for s, t, k in zip(outer[:-1], outer[1:], orders):
    la_s, _, lam_s = _la_sig_lam(schedule, s)
    la_t, sig_t, lam_t = _la_sig_lam(schedule, t)
    h = lam_t - lam_s
    phi_1 = np.expm1(h)
    a_end = np.exp(la_t - la_s)
    # Official (since v2.0): the intermediate points of a step are its own k-interval grid
    # of the same skip type, and r_j is their lambda fraction of h. For logSNR that is
    # r = 1/2 and 1/3, 2/3 (the paper's DPM-Solver-2/-3); for time_uniform the points
    # land on the NFE grid, with r far from the thirds where lambda is curved.
    inner = time_steps(schedule, skip, s, t, k)
    r = (t_to_lambda(schedule, inner[1:-1]) - lam_s) / h
    if k == 1:  # = DDIM step
      rows.append(_stage(s, a_end, -sig_t * phi_1, first=True, end=True))
    elif k == 2:
      r1, s1 = float(r[0]), float(inner[1])
      la_1, sig_1, _ = _la_sig_lam(schedule, s1)
      rows.append(_stage(s, np.exp(la_1 - la_s), -sig_1 * np.expm1(r1 * h), first=True))
      rows.append(_stage(s1, a_end, -sig_t * phi_1, -(0.5 / r1) * sig_t * phi_1, end=True))
    else:
      (r1, r2), s1, s2 = (float(v) for v in r), float(inner[1]), float(inner[2])
      la_1, sig_1, _ = _la_sig_lam(schedule, s1)
      la_2, sig_2, _ = _la_sig_lam(schedule, s2)
      phi_22 = np.expm1(r2 * h) / (r2 * h) - 1.0
      phi_2 = phi_1 / h - 1.0
      rows.append(_stage(s, np.exp(la_1 - la_s), -sig_1 * np.expm1(r1 * h), first=True))
      rows.append(_stage(s1, np.exp(la_2 - la_s), -sig_2 * np.expm1(r2 * h),
                         -(r2 / r1) * sig_2 * phi_22))
      rows.append(_stage(s2, a_end, -sig_t * phi_1, -(1.0 / r2) * sig_t * phi_2, end=True))
  if denoise_to_zero:
    la_e, sig_e, _ = _la_sig_lam(schedule, t_end)
    rows.append(dict(t=t_end, a=np.exp(-la_e), u=-sig_e * np.exp(-la_e), store=True))
  return _plan(rows)


def dpm_solver_sample(eps_fn, schedule: Schedule, x_init, key=None, *, num_steps, order=3,
                      start_step=None, skip="logSNR", method="singlestep",
                      denoise_to_zero=False):
  """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022), eps-prediction, num_steps = NFE budget,
  as the official `DPM_Solver.sample(method="singlestep")` (v2.0 on, without its 2023
  lambda clip): steps run in continuous t from start_step to 1 on the `skip` grid (see
  `singlestep_orders` for how NFE are split); each step of order k evaluates at its own
  k-interval `skip` grid (logSNR: r1 = 1/2, r1, r2 = 1/3, 2/3, the paper's DPM-Solver-2/-3).
  denoise_to_zero spends one more evaluation on the x0-prediction at t=1.
  Deterministic: `key` is accepted for a uniform call signature and ignored.
  """
  del key
  return _run_plan(eps_fn, dpm_solver_plan(schedule, num_steps=num_steps, order=order,
                                           start_step=start_step, skip=skip, method=method,
                                           denoise_to_zero=denoise_to_zero), x_init, None)


def dpm_solver_pp_plan(schedule: Schedule, *, num_steps, start_step=None, skip="logSNR",
                       lower_order_final=True, denoise_to_zero=False) -> Plan:
  t_start, t_end = _cont_start(schedule, start_step)
  n = int(num_steps)
  if n < 1:
    raise ValueError(f"dpm_solver_pp: num_steps must be >= 1, got {num_steps}")
  ts = time_steps(schedule, skip, t_start, t_end, n)
  lam = t_to_lambda(schedule, ts)
  la = continuous_log_alpha(schedule, ts)
  alpha, sig = np.exp(la), _sigma(la)
  rows = []
  for i in range(n):
    h = lam[i + 1] - lam[i]
    phi = np.expm1(-h)
    b = -alpha[i + 1] * phi
    # 2nd order except the first step and, when n < 10, the final step of the solve. With
    # denoise_to_zero that final step is the x0 evaluation (a 1st-order step to lambda =
    # inf, as diffusers' final_sigmas_type="zero"), so the last ODE step keeps 2nd order;
    # the official code lowers it as well, which the Gaussian oracle measures as several
    # times less accurate at under 10 steps.
    second = i > 0 and not (lower_order_final and not denoise_to_zero and n < 10
                            and i == n - 1)
    c = -0.5 * alpha[i + 1] * phi * h / (lam[i] - lam[i - 1]) if second else 0.0
    # x_{i+1} = (sig_{i+1}/sig_i) x + b D_i + c (D_i - D_{i-1}), D = x0-prediction
    rows.append(dict(t=ts[i], p=1 / alpha[i], q=-sig[i] / alpha[i], a=sig[i + 1] / sig[i],
                     u=b + c, v=-c, store=True))
  if denoise_to_zero:
    rows.append(dict(t=t_end, p=1 / alpha[n], q=-sig[n] / alpha[n], a=0.0, u=1.0, store=True))
  return _plan(rows)


def dpm_solver_pp_sample(eps_fn, schedule: Schedule, x_init, key=None, *, num_steps,
                         start_step=None, skip="logSNR", lower_order_final=True,
                         denoise_to_zero=False):
  """DPM-Solver++(2M) (Lu et al. 2022b): multistep 2nd order on x0-predictions, first step
  1st order. `lower_order_final` makes the final step 1st order when num_steps < 10
  (official): without denoise_to_zero that is the last ODE step to t=1; with it, the x0
  evaluation itself, and every ODE step after the first stays 2nd order (diffusers'
  DPMSolverMultistep with final_sigmas_type="zero"). num_steps = NFE (+1 with
  denoise_to_zero). Deterministic; `key` is ignored."""
  del key
  return _run_plan(eps_fn, dpm_solver_pp_plan(schedule, num_steps=num_steps,
                                              start_step=start_step, skip=skip,
                                              lower_order_final=lower_order_final,
                                              denoise_to_zero=denoise_to_zero), x_init, None)


# ---------------------------------------------------------------------------- dispatch

_PLANS = {"ddpm": ddpm_plan, "ddim": ddim_plan, "dpm_solver": dpm_solver_plan,
          "dpm_solver_pp": dpm_solver_pp_plan}


def make_plan(name: str, schedule: Schedule, **kw) -> Plan:
  if name not in _PLANS:
    raise ValueError(f"samplers: unknown sampler {name!r} (expected one of {NAMES})")
  return _PLANS[name](schedule, **kw)


def sample(name: str, eps_fn, schedule: Schedule, x_init, key=None, *, clip_x0=False, **kw):
  """Run sampler `name` ("ddpm", "ddim", "dpm_solver", "dpm_solver_pp") with its options.

  clip_x0=True runs it on `clip_denoised(eps_fn, schedule)` (implied x0 kept in [-1, 1]);
  the default leaves eps_fn as is."""
  if clip_x0:
    eps_fn = clip_denoised(eps_fn, schedule)
  return _run_plan(eps_fn, make_plan(name, schedule, **kw), x_init, key)


def nfe(name: str, *, num_timesteps=None, clip_x0=False, **kw) -> int:
  """Network evaluations one `sample(name, ..., **kw)` call makes (no schedule needed;
  "ddpm" without start_step needs num_timesteps; clip_x0 changes no count)."""
  del clip_x0
  if name == "ddpm":
    s = kw.get("start_step") or num_timesteps
    if s is None:
      raise ValueError("nfe: 'ddpm' needs start_step or num_timesteps")
    return int(s)
  if name == "ddim":
    ts = kw.get("timesteps")
    return len(ts) if ts is not None else int(kw["num_steps"])
  if name == "dpm_solver":
    orders = singlestep_orders(kw["num_steps"], kw.get("order", 3),
                               kw.get("method", "singlestep"))
    return sum(orders) + bool(kw.get("denoise_to_zero", False))
  if name == "dpm_solver_pp":
    return int(kw["num_steps"]) + bool(kw.get("denoise_to_zero", False))
  raise ValueError(f"samplers: unknown sampler {name!r} (expected one of {NAMES})")


def clip_denoised(eps_fn, schedule: Schedule, lo: float = -1.0, hi: float = 1.0):
  """Wraps eps_fn so the x0 it implies is clipped to the data range [lo, hi].

  x0 = (x - sigma eps)/alpha is clipped and eps is recomputed from it, so every sampler
  here (all are written in eps) sees a prediction consistent with bounded data. Standard
  in DDPM/DDIM sampling (Ho et al.'s `clip_denoised`); it matters most at large t, where
  1/alpha_t amplifies any eps error (x70 at t=T for the paper's schedule) and an
  imperfect network would otherwise throw the chain off the data manifold.
  """
  def wrapped(x, t):
    eps = eps_fn(x, t)
    ab = continuous_alpha_bar(schedule, t.astype(jnp.float32))
    shape = (-1,) + (1,) * (x.ndim - 1)
    a = jnp.sqrt(ab).reshape(shape)
    s = jnp.sqrt(1.0 - ab).reshape(shape)
    x0 = jnp.clip((x - s * eps) / a, lo, hi)
    return (x - a * x0) / s
  return wrapped
