"""DTDM tasks through the real train loop, predict, the D^2 degradation and the ZRR loader."""
import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import MICRO, losses, options, raw_lines, run_jisp
from jisp.core.config import load
from jisp.core.errors import ConfigError, OptionError
from jisp.data import synthetic, zrr
from jisp.infer.predict import PatchPredictor
from jisp.isp import bayer, degrade, tone
from jisp.tasks.base import PredictOptions
from jisp.tasks.dtdm import DTDMTask
from jisp.tasks.regression import RegressionTask
from jisp.train.checkpoint import restore_params
from jisp.train.runs import build_task

RGB2RAW = "configs/dtdm_rgb2raw_tiny.py"
RAW2RGB = "configs/dtdm_raw2rgb_tiny.py"
REG = "configs/regression_raw2rgb_tiny.py"
SHORT = [*MICRO, "--config.num_steps=3", "--config.log_every=1", "--config.checkpoint_every=100"]


def _psnr(a, b):
  return -10 * np.log10(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("dtdm_runs")
  wd = {k: root / k for k in ("reg", "rgb2raw", "raw2rgb")}
  run_jisp("train", "--config", REG, "--workdir", str(wd["reg"]), *SHORT)
  run_jisp("train", "--config", RGB2RAW, "--workdir", str(wd["rgb2raw"]), *SHORT)
  g = [f"--config.dtdm.estimator=regression", f"--config.dtdm.estimator_workdir={wd['reg']}"]
  run_jisp("train", "--config", RAW2RGB, "--workdir", str(wd["raw2rgb"]), *SHORT, *g)
  wd["g_overrides"] = g
  return wd


def _batch(n=4, p=16):
  return synthetic.SyntheticSource(patch_size=p, local_batch=n, seed=3, split="test").next()


def _check_image(out, shape):
  out = np.asarray(out)
  assert out.shape == shape and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


def test_rgb2raw_trains_through_the_loop_and_predicts(runs):
  wd = runs["rgb2raw"]
  ls = losses(wd)
  assert sorted(ls) == [1, 2, 3] and all(math.isfinite(v) for v in ls.values())
  ev = [r for r in raw_lines(wd) if "eval/x_psnr" in r]
  # UPI's mean camera on the synthetic camera: a rough but real RAW estimate.
  assert ev and 12.0 < ev[-1]["eval/x_psnr"] < 40.0
  task = DTDMTask(load(RGB2RAW, SHORT))
  _, params = restore_params(wd, task)
  b = _batch()
  # Through the tiled tools' sharded, AOT-compiled predictor: s = 100 steps, x_init = the
  # start noise of m_s (shared per pixel by `jisp reconstruct --shared-noise`).
  pred = PatchPredictor(task, params, PredictOptions(sampler="dtdm"), max_batch=4, devices=2)
  assert pred.nfe == 100
  z = np.random.default_rng(0).standard_normal(b["raw"].shape).astype(np.float32)
  out = pred(b["rgb"], z, jax.random.PRNGKey(0))
  _check_image(out, b["raw"].shape)
  np.testing.assert_array_equal(pred(b["rgb"], z, jax.random.PRNGKey(0)), out)
  # the network called 2 patches at a time (models.microbatch) gives the same patches
  split = PatchPredictor(task, params, PredictOptions(sampler="dtdm"), max_batch=4, devices=2,
                         net_chunk=2)
  assert split.net_chunk_for(4) == 2
  np.testing.assert_allclose(split(b["rgb"], z, jax.random.PRNGKey(0)), out, atol=1e-4)
  # The estimate is computed from the sRGB alone, and it is the UPI inverse.
  x = np.asarray(task.estimate(b["rgb"]))
  assert _psnr(x, b["raw"]) > 12.0 and task.nfe(options(task)) == 100


def test_raw2rgb_uses_the_trained_colour_network(runs):
  cfg = load(RAW2RGB, SHORT + runs["g_overrides"])
  task = build_task(cfg)  # restores the estimator run: the task itself reads no files
  _, params = restore_params(runs["raw2rgb"], task)
  assert sorted(losses(runs["raw2rgb"])) == [1, 2, 3]
  b = _batch()
  out = task.predict(params, b["raw"], jax.random.PRNGKey(1), options(task, steps=5))  # strided
  _check_image(out, b["rgb"].shape)
  # x = c = G(w) is exactly the regression run's prediction.
  reg = RegressionTask(load(REG, SHORT))
  _, gp = restore_params(runs["reg"], reg)
  np.testing.assert_allclose(task.estimate(b["raw"]),
                             reg.predict(gp, b["raw"], None, options(reg)), atol=1e-6)


def test_ddpm_ablation_arms_share_the_network(runs):
  cfg = load(RGB2RAW, SHORT + ["--config.dtdm.process=ddpm"])
  task = DTDMTask(cfg)
  _, params = restore_params(runs["rgb2raw"], task)  # same net shape: params interchange
  b = _batch()
  loss, _ = jax.jit(task.loss)(params, b, jax.random.PRNGKey(0))
  assert math.isfinite(float(loss))
  out = task.predict(params, b["rgb"], jax.random.PRNGKey(2),
                     options(task, start="noise", steps=4, sampler="ddpm"))
  _check_image(out, b["raw"].shape)
  with pytest.raises(OptionError, match="sampler"):
    options(task, sampler="dpm_solver")
  assert task.nfe(options(task, start="noise")) == 2000
  assert task.nfe(options(task, start="estimate")) == 100


def test_bad_dtdm_configs_fail_clearly():
  with pytest.raises(ConfigError, match="dtdm.estimator_workdir"):
    build_task(load(RGB2RAW, SHORT + ["--config.dtdm.estimator=regression"]))
  with pytest.raises(ConfigError, match="dtdm.direction"):
    DTDMTask(load(RGB2RAW, SHORT + ["--config.dtdm.direction=up"]))
  with pytest.raises(ConfigError, match="dtdm.s"):
    DTDMTask(load(RGB2RAW, SHORT + ["--config.dtdm.s=5000"]))
  with pytest.raises(ConfigError, match="dtdm.prediction"):
    DTDMTask(load(RGB2RAW, SHORT + ["--config.dtdm.prediction=eps"]))
  with pytest.raises(ConfigError, match="dtdm.prediction"):   # the DDPM arms predict eps
    DTDMTask(load(RGB2RAW + ":prediction=residual", SHORT + ["--config.dtdm.process=ddpm"]))


def test_degradation_degrades_but_keeps_colour():
  y = np.stack([synthetic.make_pair(np.random.default_rng(i), 64)[0] for i in range(8)])
  key = jax.random.PRNGKey(0)
  run = jax.jit(degrade.degrade)  # Params is a pytree: one compile for every setting
  x = np.asarray(run(key, y, degrade.Params(match_mean=False)))
  assert x.shape == y.shape and x.min() >= 0 and x.max() <= 1
  # Really degraded (blur, noise, JPEG): far from y pixel-wise...
  assert all(_psnr(a, b) < 33 for a, b in zip(x, y))
  # ...but the colour stays: image means within 0.02, 8x8-block means within 0.03 on average.
  assert np.abs(x.mean((1, 2)) - y.mean((1, 2))).max() < 0.02
  blocks = lambda a: a.reshape(8, 8, 8, 8, 8, 3).mean((2, 4))
  assert np.abs(blocks(x) - blocks(y)).mean() < 0.03
  # With the final mean match (the default) the means agree up to clipping.
  xm = np.asarray(run(key, y, degrade.Params()))
  assert np.abs(xm.mean((1, 2)) - y.mean((1, 2))).max() < 3e-3
  # Independent draws per image and per key.
  assert not np.allclose(xm, np.asarray(run(jax.random.PRNGKey(1), y, degrade.Params())))


def test_jpeg_simulation_matches_libjpeg():
  img = synthetic.make_pair(np.random.default_rng(0), 64)[0]
  prev = None
  for q in (40, 75, 95):
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=q,
                                                               subsampling=2)
    ref = np.asarray(Image.open(buf), np.float32) / 255
    ours = np.asarray(degrade.jpeg(img, q))
    assert _psnr(ours, ref) > 38, q           # the same codec up to rounding details
    assert abs(_psnr(ours, img) - _psnr(ref, img)) < 1.0
    if prev is not None:
      assert _psnr(ours, img) > prev          # higher quality, less loss
    prev = _psnr(ours, img)


def _write_zrr(root, n=2, size=32):
  rng = np.random.default_rng(0)
  out = []
  for split in ("train", "test"):
    (root / split / "huawei_raw").mkdir(parents=True)
    (root / split / "canon").mkdir(parents=True)
    for i in range(n):
      mosaic = rng.integers(63, 1021, (size, size)).astype(np.uint16)
      Image.fromarray(mosaic).save(root / split / "huawei_raw" / f"{i}.png")
      rgb = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
      Image.fromarray(rgb).save(root / split / "canon" / f"{i}.jpg", quality=95)
      out.append((split, i, mosaic))
  # A RAW without its DSLR image is skipped (like ZRR's full-resolution test files).
  Image.fromarray(np.zeros((size, size), np.uint16)).save(root / "train" / "huawei_raw" / "10.png")
  return out


def test_zrr_loader(tmp_path):
  written = _write_zrr(tmp_path)
  pairs = zrr.list_pairs(tmp_path, "train")
  assert [p[0].name for p in pairs] == ["0.png", "1.png"]
  pair = zrr.load_pair(*pairs[1])
  mosaic = written[1][2].astype(np.float32)
  norm = (mosaic - 63) / (1020 - 63)
  assert pair["packed"].shape == (16, 16, 4) and pair["rgb"].shape == (32, 32, 3)
  np.testing.assert_allclose(pair["packed"][..., 0], norm[0::2, 0::2], atol=1e-6)  # R
  np.testing.assert_allclose(pair["packed"][..., 3], norm[1::2, 1::2], atol=1e-6)  # B
  want = tone.gamma_compress(bayer.demosaic_bilinear(norm, "RGGB"), 2.2)
  np.testing.assert_allclose(pair["raw"], want, atol=1e-5)
  assert len(list(zrr.iter_pairs(tmp_path, "test"))) == 2

  src = zrr.ZRRSource(tmp_path, patch_size=16, local_batch=3, seed=1)
  b = src.next()
  assert b["raw"].shape == b["rgb"].shape == (3, 16, 16, 3)
  again = zrr.ZRRSource(tmp_path, patch_size=16, local_batch=3, seed=1)
  np.testing.assert_array_equal(again.batch_at(0)["rgb"], b["rgb"])
  assert src.get_state() == {"batches": 1}

  with pytest.raises(FileNotFoundError, match="huawei_raw"):
    zrr.list_pairs(tmp_path / "nowhere", "train")
  bad = tmp_path / "train" / "huawei_raw" / "1.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(ValueError, match="1.png"):
    zrr.load_pair(bad, pairs[1][1])
