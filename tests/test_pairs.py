"""Pair protocols: exact RAW-side arithmetic, real JPEG sRGB side, spatial alignment."""
import dataclasses

import numpy as np
import pytest

from jisp.core import dng
from jisp.data import pairs, raw_io
from jisp.isp import bayer, tone

CM = np.array([[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534],
               [-0.0416, 0.1540, 0.6039]])
REAL = ("canon_eos_550d_magiclantern_colorchart.dng", "canon_eos_d30_rawsamples.crw",
        "nikon_d1_rawsamples.nef")
CROP = 256


def test_the_render_and_the_tone_model_share_one_curve():
  """raw_io spells the render's gamma out (it stays JAX-free); the "render" tone model
  must invert that same curve."""
  import inspect
  assert inspect.signature(raw_io.render_srgb).parameters["gamma"].default == tone.RENDER_GAMMA


def _grad_corr(a, b):
  """Correlation of the signed luma gradients of two (H, W, C) images."""
  la, lb = a.mean(-1), b.mean(-1)
  ga = np.concatenate([np.diff(la, axis=0).ravel(), np.diff(la, axis=1).ravel()])
  gb = np.concatenate([np.diff(lb, axis=0).ravel(), np.diff(lb, axis=1).ravel()])
  return float(np.corrcoef(ga, gb)[0, 1])


def _shift_scores(raw, rgb, r=2):
  """{(dy, dx): gradient correlation of raw shifted by (dy, dx) against rgb}."""
  m = r + 1
  h, w = raw.shape[:2]
  ref = rgb[m:h - m, m:w - m]
  return {(dy, dx): _grad_corr(raw[m + dy:h - m + dy, m + dx:w - m + dx], ref)
          for dy in range(-r, r + 1) for dx in range(-r, r + 1)}


def _assert_aligned(raw, rgb, min_score, min_margin):
  s = _shift_scores(raw, rgb)
  best = max(s, key=s.get)
  runner_up = max(v for k, v in s.items() if k != (0, 0))
  assert best == (0, 0), s
  assert s[(0, 0)] > min_score and s[(0, 0)] - runner_up > min_margin, s
  for o in (2, 4):  # mirrored versions of the RAW target are not aligned at all
    assert abs(_grad_corr(raw_io.apply_orientation(raw, o), rgb)) < 0.25
  return s[(0, 0)], runner_up


# --------------------------------------------------------------------------- real files

@pytest.fixture(scope="module")
def real_crops(raw_dir):
  """{name: (capture cropped to CROP x CROP at the centre, matching sRGB render window)}."""
  out = {}
  for name in REAL:
    cap = raw_io.read_capture(raw_dir / name)
    srgb = raw_io.render_srgb(cap, oriented=False)  # crop in sensor order, orient after
    h, w = cap.mosaic.shape
    top, left = (h - CROP) // 4 * 2, (w - CROP) // 4 * 2
    small = pairs.crop_capture(cap, top, left, CROP, CROP)
    window = srgb[top:top + CROP, left:left + CROP]
    out[name] = (small, np.ascontiguousarray(raw_io.apply_orientation(window, cap.orientation)))
  return out


@pytest.mark.parametrize("name", REAL)
def test_real_pairs_shapes_and_meta(real_crops, name):
  cap, srgb = real_crops[name]
  for protocol in pairs.PROTOCOLS:
    d = pairs.make_pair(cap, srgb, protocol)
    raw, rgb, meta = d["raw"], d["rgb"], d["meta"]
    assert raw.dtype == np.float32 and rgb.dtype == np.float32
    assert 0 <= raw.min() and raw.max() <= 1 and 0 <= rgb.min() and rgb.max() <= 1
    if protocol == "packed":
      assert raw.shape == (CROP // 2, CROP // 2, 4) and rgb.shape == (CROP // 2, CROP // 2, 3)
    else:
      assert raw.shape == rgb.shape == (CROP, CROP, 3)
    assert meta["protocol"] == protocol and meta["pattern"] == cap.pattern
    assert meta["wb_source"] == cap.wb_source and meta["wb"] == cap.wb.tolist()
    assert meta["black"] == cap.black_level.tolist() and meta["white"] == cap.white_level
    assert meta["camera"] == cap.camera and meta["orientation"] == cap.orientation
    assert np.allclose(meta["color_matrix"], cap.color_matrix)


@pytest.mark.parametrize("name", REAL)
def test_real_raw_targets_are_exact(real_crops, name):
  cap, srgb = real_crops[name]
  norm = pairs.normalized_mosaic(cap)
  black = np.tile(cap.black_level.reshape(2, 2), (CROP // 2, CROP // 2))
  np.testing.assert_allclose(
      norm, np.clip((cap.mosaic - black) / (cap.white_level - black), 0, 1), atol=1e-6)
  lin = pairs.linear_rgb(cap)
  # Before WB, the demosaiced target is the normalised mosaic itself on every CFA site.
  sites = bayer.cfa_mask(cap.pattern, CROP, CROP).astype(bool)
  for c in range(3):
    assert np.array_equal(lin[..., c][sites[..., c]], norm[sites[..., c]])
  linear = pairs.make_pair(cap, srgb, "linear")["raw"]
  # The official InvISP white balance: the camera gains divided by their maximum, no clip.
  gains = np.asarray(cap.wb, np.float64) / np.max(cap.wb)
  assert gains.max() == 1.0 and np.all(gains > 0)
  np.testing.assert_allclose(linear, lin * gains, rtol=1e-6, atol=1e-7)
  assert linear.max() <= 1.0
  meta = pairs.make_pair(cap, srgb, "linear")["meta"]
  np.testing.assert_allclose(meta["target_gains"], gains, rtol=1e-6)
  assert meta["protocol_version"] == pairs.PROTOCOL_VERSION == 3
  invisp = pairs.make_pair(cap, srgb, "invisp")["raw"]
  np.testing.assert_allclose(invisp, np.maximum(linear, 1e-8) ** (1 / 2.2), atol=1e-6)
  packed = pairs.make_pair(cap, srgb, "packed")
  assert np.array_equal(packed["raw"], np.asarray(bayer.pack(norm, cap.pattern)))
  assert packed["meta"]["packed_order"] == ["R", "Gr", "Gb", "B"]
  np.testing.assert_allclose(packed["rgb"], pairs.area_downsample2(srgb / 255.0), atol=1e-6)


@pytest.mark.parametrize("name", REAL)
def test_real_srgb_is_a_real_jpeg_q90(real_crops, name):
  cap, srgb = real_crops[name]
  d = pairs.make_pair(cap, srgb, "invisp")
  rgb = d["rgb"]
  codes = rgb * 255
  assert np.allclose(codes, np.round(codes), atol=1e-4)           # decoded 8-bit values
  # The official protocol's JPEG: q90, 4:2:2 (PIL subsampling=1), not 4:2:0.
  got = np.round(codes).astype(np.uint8)
  assert np.array_equal(got, pairs.jpeg_roundtrip(srgb, 90, "4:2:2"))
  assert not np.array_equal(got, pairs.jpeg_roundtrip(srgb, 90, "4:2:0"))
  assert d["meta"]["jpeg_subsampling"] == "4:2:2" and d["meta"]["jpeg_quality"] == 90
  err = rgb - srgb / 255.0
  psnr = 10 * np.log10(1 / np.mean(err ** 2))
  assert np.abs(err).mean() > 1e-3 and 28 < psnr < 60                # lossy, but q90-close
  assert np.array_equal(pairs.make_pair(cap, srgb, "linear")["rgb"], rgb)


@pytest.mark.parametrize("name", REAL)
def test_real_invisp_target_clips_only_what_the_sensor_clipped(raw_dir, name):
  """Whole real files: target pixels at 1.0 are no more than those with a channel the
  sensor saturated (+0.1%). Green = 1 gains with a clip gave 1.8% and 4.5% on two of
  these files where under 0.1% were saturated."""
  cap = raw_io.read_capture(raw_dir / name)
  saturated = float(np.mean(pairs.linear_rgb(cap).max(-1) >= 1.0))
  target = pairs.raw_target(cap, "invisp")
  clipped = float(np.mean(target.max(-1) >= 1.0))
  assert clipped <= saturated + 1e-3, (name, clipped, saturated)
  # The target keeps the highlights: nothing above white, no information lost to WB.
  assert 0.0 <= target.min() and target.max() <= 1.0


@pytest.mark.parametrize("name", REAL)
def test_real_raw_and_srgb_are_aligned(real_crops, name):
  cap, srgb = real_crops[name]
  d = pairs.make_pair(cap, srgb, "linear")
  _assert_aligned(d["raw"], d["rgb"], min_score=0.45, min_margin=0.1)


# --------------------------------------------------------------------------- synthetic DNGs

def _scene(h, w, seed=0):
  """Blocky colour scene: strong edges in both directions, no symmetry."""
  rng = np.random.default_rng(seed)
  blocks = rng.uniform(0.05, 0.9, (h // 8, w // 8, 3))
  img = np.kron(blocks, np.ones((8, 8, 1)))
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  return np.clip(img * (0.6 + 0.4 * xx[..., None]) + 0.1 * yy[..., None], 0, 1)


def _write_scene(path, scene, pattern, orientation, black=(60, 62, 63, 61), white=4000):
  mos = np.asarray(bayer.mosaic(scene.astype(np.float32), pattern))
  b = np.tile(np.reshape(black, (2, 2)), (scene.shape[0] // 2, scene.shape[1] // 2))
  raw = np.round(b + mos * (white - b)).astype(np.uint16)
  dng.write_dng(path, raw, pattern, black, white, (0.8, 1.0, 0.9), CM,
                orientation=orientation)
  return raw


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_oriented_pairs_stay_aligned(tmp_path, orientation):
  p = tmp_path / "scene.dng"
  _write_scene(p, _scene(64, 96), "GRBG", orientation)
  cap = raw_io.read_capture(p)
  assert cap.orientation == orientation
  srgb = raw_io.render_srgb(cap)
  upright = (96, 64) if orientation >= 5 else (64, 96)
  assert srgb.shape == upright + (3,)
  d = pairs.make_pair(cap, srgb, "linear")
  assert d["raw"].shape == d["rgb"].shape == upright + (3,)
  _assert_aligned(d["raw"], d["rgb"], min_score=0.5, min_margin=0.12)


def test_normalisation_uses_per_site_levels(tmp_path):
  black, white = (60, 62, 63, 61), 4000
  rng = np.random.default_rng(0)
  frac = rng.uniform(-0.05, 1.05, (32, 48))  # below black and above white clip
  b = np.tile(np.reshape(black, (2, 2)), (16, 24))
  raw = np.clip(np.round(b + frac * (white - b)), 0, 65535).astype(np.uint16)
  p = dng.write_dng(tmp_path / "lv.dng", raw, "BGGR", black, white, (0.8, 1, 0.9), CM)
  norm = pairs.normalized_mosaic(raw_io.read_capture(p))
  np.testing.assert_allclose(norm, np.clip((raw - b) / (white - b), 0, 1), atol=1e-6)
  assert norm[frac < 0].max() == 0 and norm[frac > 1].min() == 1
  # a single scalar black would be off by up to 3 codes on some sites
  assert not np.allclose(norm, np.clip((raw - 60.0) / 3940.0, 0, 1), atol=1e-4)


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_packed_keeps_cfa_layout_under_orientation(tmp_path, pattern, orientation):
  colour = np.array([0.8, 0.5, 0.2])
  p = tmp_path / "flat.dng"
  _write_scene(p, np.ones((32, 48, 3)) * colour, pattern, orientation)
  cap = raw_io.read_capture(p)
  srgb = raw_io.render_srgb(cap)
  d = pairs.make_pair(cap, srgb, "packed")
  upright = (48, 32) if orientation >= 5 else (32, 48)
  assert d["raw"].shape == (upright[0] // 2, upright[1] // 2, 4)
  assert d["rgb"].shape == (upright[0] // 2, upright[1] // 2, 3)
  # Channel semantics survive any rotation / mirror: R, Gr, Gb, B of the flat colour.
  np.testing.assert_allclose(d["raw"].reshape(-1, 4).mean(0), [0.8, 0.5, 0.5, 0.2],
                             atol=1e-3)
  # Spatial layout: the recorded oriented pattern unpacks to the upright mosaic exactly.
  noisy = dataclasses.replace(cap, mosaic=np.random.default_rng(0).integers(
      61, 4000, cap.mosaic.shape).astype(np.uint16))
  d = pairs.make_pair(noisy, srgb, "packed")
  assert d["meta"]["oriented_pattern"] == raw_io.orient_pattern(pattern, orientation)
  up = np.asarray(bayer.unpack(d["raw"], d["meta"]["oriented_pattern"]))
  assert np.array_equal(
      up, raw_io.apply_orientation(pairs.normalized_mosaic(noisy), orientation))


def test_bad_arguments(tmp_path):
  p = tmp_path / "s.dng"
  _write_scene(p, _scene(32, 48), "RGGB", 6)
  cap = raw_io.read_capture(p)
  srgb = raw_io.render_srgb(cap)
  with pytest.raises(ValueError, match="'invISP'"):
    pairs.make_pair(cap, srgb, "invISP")
  with pytest.raises(ValueError, match="sRGB render must be uint8"):
    pairs.make_pair(cap, raw_io.render_srgb(cap, oriented=False), "linear")  # not upright
  with pytest.raises(ValueError, match="sRGB render must be uint8"):
    pairs.make_pair(cap, srgb.astype(np.float32) / 255, "linear")
  with pytest.raises(ValueError, match="even"):
    pairs.crop_capture(cap, 1, 0, 8, 8)
  with pytest.raises(ValueError, match="outside"):
    pairs.crop_capture(cap, 0, 0, 64, 8)
