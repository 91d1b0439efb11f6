"""The InvISP flow: exact inverse, log-determinant, LU 1x1 conv, on random and real data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.models import flow as flow_lib

TOL = 1e-4
SHAPE = (3, 32, 32, 3)   # one input shape for the 8-block flow: one compile per direction


def roundtrip_error(fl, params, x, fwd=None, inv=None):
  fwd, inv = fwd or jax.jit(fl.forward), inv or jax.jit(fl.inverse)
  y = fwd(params, x)
  return float(jnp.max(jnp.abs(inv(params, y) - x))), y


@pytest.fixture(scope="module")
def flow8():
  """The default depth (8 blocks) with small subnets, and its jitted passes."""
  fl = flow_lib.InvISPFlow(num_blocks=8, growth=8)
  return fl, fl.init(jax.random.PRNGKey(0)), jax.jit(fl.forward), jax.jit(fl.inverse)


def real_patches(raw_dir, size=32, per_file=3):
  """Aligned (raw, rgb) crops of the real files: centre, brightest and darkest windows."""
  from jisp.data import pairs, raw_io
  from jisp.data.prepare import list_raw_files
  raws, rgbs = [], []
  for path in list_raw_files(raw_dir):
    cap = raw_io.read_capture(path)
    pr = pairs.make_pair(cap, raw_io.render_srgb(cap), "invisp")
    raw, rgb = pr["raw"], pr["rgb"]
    h, w = raw.shape[:2]
    lum = raw[: h // size * size, : w // size * size].mean(-1)
    blocks = lum.reshape(h // size, size, w // size, size).mean((1, 3))
    picks = [((h // 2) // size, (w // 2) // size),
             np.unravel_index(np.argmax(blocks), blocks.shape),
             np.unravel_index(np.argmin(blocks), blocks.shape)][:per_file]
    for by, bx in picks:
      y, x = int(by) * size, int(bx) * size
      raws.append(raw[y:y + size, x:x + size])
      rgbs.append(rgb[y:y + size, x:x + size])
  return np.stack(raws).astype(np.float32), np.stack(rgbs).astype(np.float32)


def test_roundtrip_random_inputs(flow8):
  fl, p, fwd, inv = flow8
  for i, (lo, hi) in enumerate([(0.0, 1.0), (-0.5, 1.5)]):   # image range and beyond
    x = jax.random.uniform(jax.random.PRNGKey(1 + i), SHAPE, minval=lo, maxval=hi)
    err, y = roundtrip_error(fl, p, x, fwd, inv)
    print(f"8 blocks, random params, inputs U[{lo}, {hi}]: max |f^-1(f(x)) - x| = {err:.2e}")
    assert err < TOL, (i, err)
    assert float(jnp.max(jnp.abs(y - x))) > 0.1   # the map is not the identity
  # Far outside the data range the outputs grow to ~1e3 and fp32 rounding grows with
  # them: the inverse stays exact relative to the output scale.
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(3), SHAPE)
  err, y = roundtrip_error(fl, p, x, fwd, inv)
  assert err < 1e-6 * float(jnp.max(jnp.abs(y))) * 100, err


def test_inverse_then_forward(flow8):
  fl, p, fwd, inv = flow8
  y = jax.random.uniform(jax.random.PRNGKey(4), SHAPE)
  assert float(jnp.max(jnp.abs(fwd(p, inv(p, y)) - y))) < TOL


def test_roundtrip_real_patches(raw_dir, flow8):
  fl, p, fwd, inv = flow8
  raw, rgb = real_patches(raw_dir)
  assert raw.shape[0] >= 3 and raw.max() > 0.5   # the brightest windows are in the set
  for name, arr in (("raw", raw), ("rgb", rgb)):   # both sides as flow input
    for i in range(0, len(arr) - len(arr) % 3, 3):
      err, _ = roundtrip_error(fl, p, jnp.asarray(arr[i:i + 3]), fwd, inv)
      assert err < TOL, (name, i, err)


def test_logdet_is_slogdet_of_the_jacobian():
  shape = (1, 4, 4, 3)
  fl = flow_lib.InvISPFlow(num_blocks=3, growth=4)
  p = fl.init(jax.random.PRNGKey(4))
  x = jax.random.uniform(jax.random.PRNGKey(5), shape)
  flat = lambda v: fl.forward(p, v.reshape(shape)).reshape(-1)
  jac = jax.jit(jax.jacfwd(flat))(x.reshape(-1))          # (48, 48)
  sign, logabs = jnp.linalg.slogdet(jac)
  y, ld = jax.jit(fl.forward_logdet)(p, x)
  assert float(sign) != 0.0
  np.testing.assert_allclose(float(ld[0]), float(logabs), rtol=1e-3, atol=1e-3)
  assert abs(float(logabs)) > 0.05      # a non-trivial volume change is being checked
  _, ld_inv = jax.jit(fl.inverse_logdet)(p, y)
  np.testing.assert_allclose(float(ld_inv[0]), -float(ld[0]), rtol=1e-4, atol=1e-4)


def test_conv1x1_lu_init_and_inverse():
  p = flow_lib.init_conv1x1(jax.random.PRNGKey(6), 3)
  w = np.asarray(flow_lib.conv1x1_weight(p))
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-5)   # starts as a rotation
  np.testing.assert_allclose(float(jnp.sum(p["log_s"])), 0.0, atol=1e-5)
  assert abs(np.linalg.det(w) - 1.0) < 1e-5
  # any parameter values stay invertible, and the inverse is the matrix inverse
  q = jax.tree.map(lambda a: a + jax.random.normal(jax.random.PRNGKey(7), a.shape), p)
  wq = np.asarray(flow_lib.conv1x1_weight(q))
  np.testing.assert_allclose(np.asarray(flow_lib.conv1x1_weight(q, inverse=True)) @ wq,
                             np.eye(3), atol=1e-5)
  np.testing.assert_allclose(np.log(abs(np.linalg.det(wq))), float(jnp.sum(q["log_s"])),
                             rtol=1e-5, atol=1e-5)


def test_stacked_params_and_config():
  import ml_collections
  m = ml_collections.ConfigDict(dict(num_blocks=5, growth=8, zero_init_last=True))
  fl = flow_lib.from_config(m)
  p = fl.init(jax.random.PRNGKey(8))
  assert all(leaf.shape[0] == 5 for leaf in jax.tree.leaves(p))
  assert (fl.channels, fl.split) == (3, 1)
  # zero last conv: the couplings start as the identity, only the 1x1 convs act
  x = jax.random.uniform(jax.random.PRNGKey(9), (1, 8, 8, 3))
  w = jnp.eye(3)
  for i in range(5):
    w = flow_lib.conv1x1_weight(jax.tree.map(lambda a: a[i], p["conv1x1"])) @ w
  np.testing.assert_allclose(np.asarray(jax.jit(fl.forward)(p, x)), np.asarray(x @ w.T),
                             atol=1e-5)
  assert flow_lib.from_config(m, channels=9).split == 3
  with pytest.raises(ValueError, match="split"):
    flow_lib.InvISPFlow(channels=3, split=3)


def test_rolled_scan_equals_unrolled():
  a = flow_lib.InvISPFlow(num_blocks=3, growth=4)
  b = flow_lib.InvISPFlow(num_blocks=3, growth=4, scan=True)
  p = a.init(jax.random.PRNGKey(10))
  x = jax.random.uniform(jax.random.PRNGKey(11), (1, 8, 8, 3))
  yb = jax.jit(b.forward)(p, x)
  np.testing.assert_allclose(np.asarray(jax.jit(a.forward)(p, x)), np.asarray(yb), atol=1e-5)
  assert float(jnp.max(jnp.abs(jax.jit(b.inverse)(p, yb) - x))) < TOL
