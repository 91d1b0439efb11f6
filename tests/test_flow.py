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


# ---- the official equations, transcribed independently in float64 NumPy with torch's layouts
# (NCHW images, (out, in, kh, kw) kernels): yzxing87/Invertible-ISP model/model.py (DenseBlock,
# InvBlock, InvISPNet) and model/modules.py (InvertibleConv1x1 with LU_decomposed=True).

def _conv3x3(x, w, b):
  """torch Conv2d(kernel 3, stride 1, padding 1): x (N, C, H, W), w (O, C, 3, 3), b (O,)."""
  h, wd = x.shape[2:]
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
            for i in range(3) for j in range(3))
  return out + b[None, :, None, None]


def _lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def _official_dense_block(x, p):
  x1 = _lrelu(_conv3x3(x, *p["conv1"]))
  x2 = _lrelu(_conv3x3(np.concatenate((x, x1), 1), *p["conv2"]))
  x3 = _lrelu(_conv3x3(np.concatenate((x, x1, x2), 1), *p["conv3"]))
  x4 = _lrelu(_conv3x3(np.concatenate((x, x1, x2, x3), 1), *p["conv4"]))
  return _conv3x3(np.concatenate((x, x1, x2, x3, x4), 1), *p["conv5"])


def _official_invconv_weight(p, reverse):
  """InvertibleConv1x1.get_weight: W = P L (U + diag(sign_s exp(log_s))), masked params."""
  c = p["log_s"].shape[0]
  l_mask = np.tril(np.ones((c, c)), -1)
  lower = p["lower"] * l_mask + np.eye(c)
  u = p["upper"] * l_mask.T + np.diag(p["sign_s"] * np.exp(p["log_s"]))
  if reverse:
    return np.linalg.inv(u) @ np.linalg.inv(lower) @ np.linalg.inv(p["p"])
  return p["p"] @ lower @ u


def _official_block(x, p, rev=False, clamp=0.8, split=1):
  """InvBlock.forward(x, rev)."""
  sig = lambda v: 1.0 / (1.0 + np.exp(-v))
  mix = lambda v, w: np.einsum("oc,nchw->nohw", w, v)       # F.conv2d with a 1x1 kernel
  if not rev:
    x = mix(x, _official_invconv_weight(p["invconv"], False))
    x1, x2 = x[:, :split], x[:, split:]
    y1 = x1 + _official_dense_block(x2, p["F"])
    s = clamp * (sig(_official_dense_block(y1, p["H"])) * 2 - 1)
    y2 = x2 * np.exp(s) + _official_dense_block(y1, p["G"])
    return np.concatenate((y1, y2), 1)
  x1, x2 = x[:, :split], x[:, split:]
  s = clamp * (sig(_official_dense_block(x1, p["H"])) * 2 - 1)
  y2 = (x2 - _official_dense_block(x1, p["G"])) / np.exp(s)
  y1 = x1 - _official_dense_block(y2, p["F"])
  return mix(np.concatenate((y1, y2), 1), _official_invconv_weight(p["invconv"], True))


def _official_params(rng, growth=32, channels=3, split=1):
  """Fixed, non-trivial parameters in the official layout: every conv ~ its xavier std with
  nonzero biases (conv5 too, which a zero init would hide), full random L / U matrices (the
  masks must drop their other halves) and log_s away from 0. P = I and sign_s = +1: the
  part of the official parametrisation jisp keeps (its docstring)."""
  def dense(cin, cout):
    p, c = {}, cin
    for i in range(5):
      o = growth if i < 4 else cout
      std = np.sqrt(2.0 / (9 * (c + o)))
      p[f"conv{i + 1}"] = (rng.normal(0, std, (o, c, 3, 3)), rng.normal(0, 0.1, (o,)))
      c += growth
    return p
  n1, n2 = split, channels - split
  inv = {"lower": rng.normal(0, 0.5, (channels, channels)),
         "upper": rng.normal(0, 0.5, (channels, channels)),
         "log_s": rng.normal(0, 0.3, (channels,)),
         "p": np.eye(channels), "sign_s": np.ones(channels)}
  return {"invconv": inv, "F": dense(n2, n1), "G": dense(n1, n2), "H": dense(n1, n2)}


def _to_jisp(p):
  """Official block parameters -> jisp's pytree (flax kernels are (kh, kw, in, out))."""
  nets = {name: {conv: {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32),
                        "bias": jnp.asarray(b, jnp.float32)}
                 for conv, (w, b) in p[name].items()} for name in ("F", "G", "H")}
  inv = p["invconv"]
  return {"conv1x1": {k: jnp.asarray(inv[k], jnp.float32) for k in ("lower", "upper", "log_s")},
          **nets}


def _nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def official():
  """Three official blocks (growth 32, as the paper) and an input, (2, 10, 12, 3)."""
  rng = np.random.default_rng(20)
  blocks = [_official_params(rng) for _ in range(3)]
  x = rng.uniform(0.0, 1.0, (2, 10, 12, 3))
  return blocks, x


def test_block_is_the_official_block(official):
  blocks, x = official
  fl = flow_lib.InvISPFlow(num_blocks=1, growth=32)
  p = _to_jisp(blocks[0])
  xj = jnp.asarray(x, jnp.float32)
  y, ld = jax.jit(fl.block_forward)(p, xj)
  ref = _official_block(_nchw(x), blocks[0])
  # The parameters make every part of the coupling act (not a near-identity block).
  sub = _official_dense_block
  x_mixed = np.einsum("oc,nchw->nohw", _official_invconv_weight(blocks[0]["invconv"], False),
                      _nchw(x))
  y1 = x_mixed[:, :1] + sub(x_mixed[:, 1:], blocks[0]["F"])
  s = 0.8 * (2.0 / (1.0 + np.exp(-sub(y1, blocks[0]["H"]))) - 1.0)
  assert np.std(s) > 0.05 and np.abs(sub(x_mixed[:, 1:], blocks[0]["F"])).mean() > 0.05
  assert np.abs(sub(y1, blocks[0]["G"])).mean() > 0.05
  np.testing.assert_allclose(_nchw(y), ref, rtol=1e-5, atol=1e-5)
  # log|det|: H*W*sum(log_s) for the 1x1 conv plus sum(s) for the coupling
  np.testing.assert_allclose(np.asarray(ld), 120 * blocks[0]["invconv"]["log_s"].sum()
                             + s.sum(axis=(1, 2, 3)), rtol=1e-5)
  # The official reverse branch, on an input that is not an output of the forward pass.
  z = np.random.default_rng(21).uniform(-1.0, 2.0, x.shape)
  xi, _ = jax.jit(fl.block_inverse)(p, jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(_nchw(xi), _official_block(_nchw(z), blocks[0], rev=True),
                             rtol=1e-5, atol=1e-5)


def test_stack_is_the_official_net(official):
  blocks, x = official
  fl = flow_lib.InvISPFlow(num_blocks=3, growth=32, scan=True)   # rolled: one block compiled
  params = jax.tree.map(lambda *a: jnp.stack(a), *[_to_jisp(b) for b in blocks])
  ref = _nchw(x)
  for b in blocks:                       # InvISPNet.forward(x, rev=False)
    ref = _official_block(ref, b)
  y = jax.jit(fl.forward)(params, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(_nchw(y), ref, rtol=1e-5, atol=1e-5)
  z = np.random.default_rng(22).uniform(0.0, 1.0, x.shape)
  ref = _nchw(z)
  for b in reversed(blocks):             # InvISPNet.forward(x, rev=True)
    ref = _official_block(ref, b, rev=True)
  xi = jax.jit(fl.inverse)(params, jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(_nchw(xi), ref, rtol=1e-5, atol=1e-5)


def test_conv1x1_is_the_official_lu_conv(official):
  inv = official[0][1]["invconv"]
  p = _to_jisp(official[0][1])["conv1x1"]
  np.testing.assert_allclose(np.asarray(flow_lib.conv1x1_weight(p)),
                             _official_invconv_weight(inv, False), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(flow_lib.conv1x1_weight(p, inverse=True)),
                             _official_invconv_weight(inv, True), rtol=1e-5, atol=1e-5)


def test_init_is_the_official_effective_init():
  # InvISPNet.initialize() re-draws every Conv2d as xavier_normal_ (std sqrt(2 / (fan_in +
  # fan_out)), fan = channels x 3 x 3), bias 0, after the DenseBlock's own init: conv5 is
  # therefore not zero. Sample std over 8 blocks, per conv of each subnet.
  fl = flow_lib.InvISPFlow(num_blocks=8, growth=32)
  p = fl.init(jax.random.PRNGKey(12))
  cin = {"F": 2, "G": 1, "H": 1}
  cout = {"F": 1, "G": 2, "H": 2}
  for name in ("F", "G", "H"):
    for i in range(5):
      conv = p[name][f"conv{i + 1}"]
      c_in, c_out = cin[name] + 32 * i, (32 if i < 4 else cout[name])
      assert conv["kernel"].shape == (8, 3, 3, c_in, c_out)
      want = np.sqrt(2.0 / (9 * (c_in + c_out)))
      got = float(jnp.std(conv["kernel"]))
      assert abs(got / want - 1.0) < 0.1, (name, i, got, want)
      assert abs(float(jnp.mean(conv["kernel"]))) < 0.1 * want
      assert float(jnp.max(jnp.abs(conv["bias"]))) == 0.0
