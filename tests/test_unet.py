"""The paper U-Net: output shape and parameter count (README states the same numbers)."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import config as config_utils
from jisp.models import unet
from helpers import REPO

PAPER_PARAMS = 12_584_835  # README: "12,584,835 parameters"


def _shapes(cfg, batch=2):
  m = unet.from_config(cfg.model)
  p = cfg.data.patch_size
  x = jax.ShapeDtypeStruct((batch, p, p, cfg.model.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  params = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.ones(t.shape)))
  out = jax.eval_shape(lambda v, a, b: m.apply(v, a, b), params, x, t)
  return params, out


def test_paper_unet_shape_and_param_count():
  cfg = config_utils.load(REPO / "configs/ddpm_fivek.py")
  params, out = _shapes(cfg)
  assert out.shape == (2, 64, 64, 3) and out.dtype == jnp.float32
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  assert n == PAPER_PARAMS
  readme = (REPO / "README.md").read_text()
  assert f"{PAPER_PARAMS:,}" in readme
  # Attention only after stages 2-4, one res block per encoder stage.
  names = set(params["params"].keys())
  assert {"down0_res0", "down1_attn0", "down3_attn0"} <= names
  assert "down0_attn0" not in names and "down0_res1" not in names


def test_ablation_param_counts_move_the_right_way():
  base = config_utils.load(REPO / "configs/ddpm_fivek.py")
  count = lambda c: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(_shapes(c)[0]))
  assert count(config_utils.load("ddpm_fivek.py:nres=2")) > 1.3 * PAPER_PARAMS
  assert count(config_utils.load("ddpm_fivek.py:base=32")) < 0.3 * PAPER_PARAMS
  _, out = _shapes(config_utils.load("ddpm_fivek.py:patch=128"), batch=1)
  assert out.shape == (1, 128, 128, 3)
  del base


def test_tiny_unet_runs_and_depends_on_condition_and_time():
  cfg = config_utils.load(REPO / "configs/ddpm_tiny.py")
  m = unet.from_config(cfg.model)
  p = cfg.data.patch_size
  x = jax.random.normal(jax.random.PRNGKey(1), (2, p, p, 6))
  v = m.init(jax.random.PRNGKey(0), x, jnp.ones((2,)))
  f = jax.jit(lambda x, t: m.apply(v, x, t))
  y = f(x, jnp.array([10.0, 10.0]))
  assert y.shape == (2, p, p, 3) and bool(jnp.all(jnp.isfinite(y)))
  assert not np.allclose(y, f(x, jnp.array([900.0, 900.0])), atol=1e-5)
  x2 = x.at[..., 3:].set(0.0)
  assert not np.allclose(y, f(x2, jnp.array([10.0, 10.0])), atol=1e-5)
