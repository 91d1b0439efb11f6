"""The target camera as an input (prior.mode, dtdm.upi_profile): the camera features that
reach predict are the test image's; residual-over-UPI with a zero network is UPI exactly;
batches carry each patch's camera from the RAW file's metadata."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_jisp
from jisp.core.config import load
from jisp.core.errors import ConfigError
from jisp.data import raw_io
from jisp.data.synthetic import SyntheticSource
from jisp.infer import evaluate, reconstruct
from jisp.infer.predict import PatchPredictor
from jisp.isp import prior
from jisp.tasks import get_task
from jisp.tasks.base import PredictOptions
from jisp.train import runs, sources
from jisp.train.checkpoint import restore_params

P = 16
SMALL_UNET = ["--config.model.base_channels=8", "--config.model.num_groups=4",
              f"--config.data.patch_size={P}"]
# (config, overrides, predict options): each task's residual-over-UPI variant
RESIDUAL = {
    "regression": ("regression_rgb2raw_tiny.py:prior=residual", [f"--config.data.patch_size={P}"],
                   None),
    "regression_both": ("regression_rgb2raw_tiny.py:prior=both",
                        [f"--config.data.patch_size={P}"], None),
    "ssdnet": ("ssdnet_tiny.py:prior=residual",
               [f"--config.data.patch_size={P}", "--config.stages=()"], None),
    "ddpm_ddim": ("ddpm_tiny.py:prior=residual", SMALL_UNET,
                  PredictOptions(sampler="ddim", steps=4, eta=0.0)),
    "ddpm_dpm_solver": ("ddpm_tiny.py:prior=both", SMALL_UNET,
                        PredictOptions(sampler="dpm_solver", steps=4)),
    # DTDM's process runs from its UPI estimate: a zero network with zero start noise and
    # eta = 0 returns the estimate
    "dtdm": ("dtdm_rgb2raw_tiny.py", SMALL_UNET + ["--config.dtdm.upi_profile=camera"],
             PredictOptions(sampler="dtdm", steps=4, eta=0.0)),
}


@pytest.fixture(scope="module")
def cameras(tmp_path_factory):
  """Two virtual-camera DNGs (cameras A and B) and their own camera features as
  evaluation reads them."""
  from jisp.data import virtual_camera
  d = tmp_path_factory.mktemp("cams")
  paths = virtual_camera.write_virtual_raw_dir(d / "raw", 2, seed=11, size=64)
  feats = [evaluate.load_pair(p, "invisp")["camera"] for p in paths]
  assert not np.allclose(feats[0]["rgb2cam"], feats[1]["rgb2cam"])
  return d / "raw", paths, feats


def _rgb(n=4):
  return SyntheticSource(patch_size=P, local_batch=n, seed=5, split="test").next()["rgb"]


def _zero(task):
  return jax.tree.map(jnp.zeros_like, task.init_params(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("name", sorted(RESIDUAL))
def test_zero_network_is_upi_with_the_given_camera(name, cameras):
  spec, overrides, opts = RESIDUAL[name]
  task = get_task(load(spec, overrides))
  assert task.io.camera
  pred = PatchPredictor(task, _zero(task), opts, max_batch=4, devices=2)
  x = _rgb()
  noise = np.zeros(x.shape, np.float32) if task.io.noise_channels else None
  outs = []
  for feats in cameras[2]:
    out = pred(x, noise, jax.random.PRNGKey(0), camera=feats)
    np.testing.assert_allclose(out, prior.rgb_to_raw(x, feats), atol=2e-6)
    outs.append(out)
  # camera B's profile moves the output exactly as it moves UPI's
  upi_move = np.asarray(prior.rgb_to_raw(x, cameras[2][1]) - prior.rgb_to_raw(x, cameras[2][0]))
  assert np.abs(upi_move).mean() > 1e-3
  np.testing.assert_allclose(outs[1] - outs[0], upi_move, atol=4e-6)


# the key each residual variant's prior reads its tone model from
TONE_KEY = {n: "dtdm.upi_tone" if n == "dtdm" else "prior.tone" for n in RESIDUAL}


@pytest.mark.parametrize("name", ["regression_both", "ssdnet", "ddpm_dpm_solver", "dtdm"])
def test_zero_network_with_the_render_tone_is_that_estimate(name, cameras):
  """prior.tone=render (dtdm.upi_tone for the DTDM) reaches every task's prior: a zero
  network returns UPI with the protocol's render curve, not Brooks et al.'s tone model."""
  spec, overrides, opts = RESIDUAL[name]
  task = get_task(load(spec, overrides + [f"--config.{TONE_KEY[name]}=render"]))
  pred = PatchPredictor(task, _zero(task), opts, max_batch=4, devices=2)
  x = _rgb()
  noise = np.zeros(x.shape, np.float32) if task.io.noise_channels else None
  out = pred(x, noise, jax.random.PRNGKey(0), camera=cameras[2][1])
  want = prior.rgb_to_raw(x, cameras[2][1], tone_model="render")
  np.testing.assert_allclose(out, want, atol=2e-6)
  assert np.abs(np.asarray(want - prior.rgb_to_raw(x, cameras[2][1]))).mean() > 1e-2


def test_ssdnet_with_zero_init_starts_as_its_prior(cameras):
  """prior.zero_init: the freshly initialised residual SSDNet (not a zeroed one) is the
  prior exactly; without it, PyTorch's init of the head adds a random correction."""
  x = _rgb()
  want = np.asarray(prior.rgb_to_raw(x, cameras[2][0]))
  for zero, close in (("true", True), ("false", False)):
    spec, overrides, _ = RESIDUAL["ssdnet"]
    task = get_task(load(spec, overrides + [f"--config.prior.zero_init={zero}"]))
    params = task.init_params(jax.random.PRNGKey(0))
    out = np.asarray(task.predict(params, x, None, PredictOptions(), camera=prior.batched(
        cameras[2][0], x.shape[0])))
    assert np.allclose(out, want, atol=2e-6) == close, zero


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_fresh_residual_dtdm_samples_its_estimate_from_any_noise(eta, cameras):
  """dtdm.prediction=residual (model.zero_out): the freshly initialised network, not a
  zeroed one, returns UPI with the given camera whatever its start and step noise; the
  paper's f-network from the same zero start does not (y_hat = m_t / sqrt(ab_t))."""
  x = _rgb()
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), x.shape), np.float32)
  want = np.asarray(prior.rgb_to_raw(x, cameras[2][1]))
  opts = PredictOptions(sampler="dtdm", steps=4, eta=eta)
  for pred, close in (("residual", True), ("f", False)):
    task = get_task(load(f"dtdm_rgb2raw_tiny.py:prediction={pred}",
                         SMALL_UNET + ["--config.dtdm.upi_profile=camera",
                                       "--config.model.zero_out=true"]))
    params = task.init_params(jax.random.PRNGKey(0))
    out = PatchPredictor(task, params, opts, max_batch=4, devices=2)(
        x, noise, jax.random.PRNGKey(0), camera=cameras[2][1])
    assert np.allclose(out, want, atol=2e-6) == close, pred


def test_the_render_tone_inverts_libraws_render_of_a_camera_file(cameras):
  """On the pairs jisp evaluates (LibRaw's render of a camera file, through the JPEG
  round trip), UPI with the render's own curve is far closer to the RAW than Brooks et
  al.'s tone model, with the same metadata: the gap is the tone model, not the camera."""
  from jisp.core.metrics import psnr
  for path in cameras[1]:
    pair = evaluate.load_pair(path, "invisp")
    rgb, raw, cam = pair["rgb"][None], pair["raw"], pair["camera"]
    brooks = psnr(np.asarray(prior.rgb_to_raw(rgb, cam))[0], raw)
    render = psnr(np.asarray(prior.rgb_to_raw(rgb, cam, tone_model="render"))[0], raw)
    assert render > brooks + 1.5, (path.name, brooks, render)   # 64-px files: +2.3, +3.5


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_zero_x0_predicting_ddpm_is_upi_from_any_start_noise(sampler, cameras):
  """prediction=x0 over a residual prior: the zero network's x0 is zero at every step, so
  the sample is UPI whatever noise it starts from (eps- and v-networks need zero noise)."""
  task = get_task(load("ddpm_tiny.py:prior=residual,prediction=x0", SMALL_UNET))
  opts = PredictOptions(sampler=sampler, steps=4, **({"eta": 0.0} if sampler == "ddim" else {}))
  pred = PatchPredictor(task, _zero(task), opts, max_batch=4, devices=2)
  x = _rgb()
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), x.shape), np.float32)
  out = pred(x, noise, jax.random.PRNGKey(0), camera=cameras[2][1])
  np.testing.assert_allclose(out, prior.rgb_to_raw(x, cameras[2][1]), atol=2e-6)


def test_fresh_x0_ddpm_with_zero_out_samples_upi(cameras):
  """model.zero_out on the DDPM's U-Net: the freshly initialised x0-network over a residual
  prior is UPI from any start noise; without it the random output conv adds a correction."""
  x = _rgb()
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), x.shape), np.float32)
  want = np.asarray(prior.rgb_to_raw(x, cameras[2][1]))
  opts = PredictOptions(sampler="dpm_solver", steps=4)
  for zero, close in (("true", True), ("false", False)):
    task = get_task(load("ddpm_tiny.py:prior=residual,prediction=x0",
                         SMALL_UNET + [f"--config.model.zero_out={zero}"]))
    out = PatchPredictor(task, task.init_params(jax.random.PRNGKey(0)), opts, max_batch=4,
                         devices=2)(x, noise, jax.random.PRNGKey(0), camera=cameras[2][1])
    assert np.allclose(out, want, atol=2e-6) == close, zero


def test_eval_gives_the_network_each_test_files_own_camera(cameras):
  """`jisp eval`'s library path: a zero residual net scores exactly as UPI with each file's
  own metadata (both get the file's camera; neither falls back to its default)."""
  raw_dir, paths, feats = cameras
  tile = [reconstruct.Tiling(0, True)]
  scores = {}
  # the render-tone prior against `--method upi_render` the same way
  for tone, baseline in (("upi", "upi"), ("render", "upi_render")):
    cfg = load("regression_rgb2raw_tiny.py:prior=residual", [f"--config.prior.tone={tone}"])
    task = runs.build_task(cfg)
    zero_run = runs.Run(None, cfg, task, 0, _zero(task))
    results = {}
    for name, run in (("zero", zero_run), ("upi", runs.baseline_run(baseline))):
      predictor = PatchPredictor(run.task, run.params, None, max_batch=8, devices=2)
      results[name], _ = evaluate.evaluate(run, predictor, paths, "invisp", tile)
    for a, b in zip(results["zero"]["images"], results["upi"]["images"]):
      ra, rb = a["results"]["grid"], b["results"]["grid"]
      assert math.isclose(ra["raw_psnr"], rb["raw_psnr"], abs_tol=1e-3)
    scores[tone] = results["upi"]["mean_raw_psnr"]
  assert scores["render"] > scores["upi"] + 1.0
  cfg = load("regression_rgb2raw_tiny.py:prior=residual")
  task = runs.build_task(cfg)
  zero_run = runs.Run(None, cfg, task, 0, _zero(task))
  pair = evaluate.load_pair(paths[1], "invisp")
  predictor = PatchPredictor(task, zero_run.params, None, max_batch=8, devices=2)
  own, other = (reconstruct.predict_image(predictor, pair["rgb"], tile[0],
                                          key=jax.random.PRNGKey(0), camera=f)
                for f in (pair["camera"], feats[0]))
  # the camera handed over is the one used, whole image through the tiled predictor
  np.testing.assert_allclose(own, prior.rgb_to_raw(pair["rgb"][None], pair["camera"])[0],
                             atol=2e-6)
  np.testing.assert_allclose(other, prior.rgb_to_raw(pair["rgb"][None], feats[0])[0],
                             atol=2e-6)
  assert np.abs(own - other).mean() > 1e-3


def test_a_trained_run_follows_the_camera_it_is_given(tmp_path, cameras):
  """Trained on camera A (the synthetic camera, whose features every batch carried), the
  residual run given camera B moves its output by exactly UPI's move from A to B."""
  wd = tmp_path / "run"
  run_jisp("train", "--config", "regression_rgb2raw_tiny.py:prior=residual", "--workdir",
           str(wd), f"--config.data.patch_size={P}", "--config.batch_size=8",
           "--config.num_steps=4", "--config.log_every=2", "--config.checkpoint_every=4",
           "--config.eval_every=4", "--config.eval_batches=1")
  run = runs.load_run(wd)
  assert run.task.io.camera and run.step == 4
  assert any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(
      run.params["conv_out"]))  # trained: no longer the zero-initialised output
  x = _rgb()
  a = prior.features(prior.SYNTHETIC_PROFILE)
  b = cameras[2][1]
  pred = PatchPredictor(run.task, run.params, None, max_batch=4, devices=2)
  out_a, out_b = (pred(x, None, jax.random.PRNGKey(0), camera=f) for f in (a, b))
  # no camera given: the run's training camera
  np.testing.assert_array_equal(pred(x, None, jax.random.PRNGKey(0)), out_a)
  move = np.asarray(prior.rgb_to_raw(x, b) - prior.rgb_to_raw(x, a))
  inside = (out_a > 0) & (out_a < 1) & (out_b > 0) & (out_b < 1)
  assert inside.mean() > 0.5
  np.testing.assert_allclose((out_b - out_a)[inside], move[inside], atol=2e-5)


def test_batches_carry_each_patchs_camera_from_its_raw_file(tmp_path):
  from jisp.data import prepare, virtual_camera
  from jisp.data.pipeline import ShardSource
  from jisp.core.camera import camera_features
  raw = tmp_path / "raw"
  virtual_camera.write_virtual_raw_dir(raw, 3, seed=2, size=64)
  out = tmp_path / "out"
  prepare.prepare(raw, out, patch=32, stride=32, split=1.0, shards=2, workers=1,
                  progress=False)
  src = ShardSource(out, "train", patch_size=P, local_batch=6, seed=0, with_info=True,
                    camera=True)
  b = src.next()
  assert len(set(b["file_id"])) > 1
  for i, fid in enumerate(b["file_id"]):
    want = camera_features(raw_io.read_capture(raw / fid).profile())
    for k in want:
      np.testing.assert_array_equal(b[k][i], want[k])
  src.close()
  # the source asks the task: keys only for configs that take the camera
  with_prior = load("regression_rgb2raw_tiny.py:prior=input", [f"--config.data.dir={out}",
                                                              f"--config.data.patch_size={P}"])
  plain = load("regression_rgb2raw_tiny.py", [f"--config.data.dir={out}",
                                              f"--config.data.patch_size={P}"])
  for cfg, keys in ((with_prior, ["raw", "rgb", "rgb2cam", "wb"]), (plain, ["raw", "rgb"])):
    s = sources.make_source(cfg, "train", local_batch=2, process_index=0, process_count=1)
    assert sorted(s.next()) == keys == sorted(get_task(cfg).batch_spec(2))
    s.close()
  # DTDM's "auto" profile: each patch's camera with real data, UPI's mean camera without
  dt = load("dtdm_rgb2raw_tiny.py", [f"--config.data.dir={out}"])
  assert "wb" in runs.build_task(dt).batch_spec(2) and runs.build_task(dt).io.camera
  assert not get_task(load("dtdm_rgb2raw_tiny.py")).io.camera
  # the synthetic source carries its own fixed camera
  syn = SyntheticSource(patch_size=P, local_batch=2, seed=0, camera=True).next()
  np.testing.assert_array_equal(syn["rgb2cam"][1],
                                prior.features(prior.SYNTHETIC_PROFILE)["rgb2cam"])


@pytest.mark.parametrize("name", ["regression_both", "ssdnet", "ddpm_ddim", "dtdm"])
def test_tasks_take_batches_with_or_without_camera_features(name):
  spec, overrides, _ = RESIDUAL[name]
  task = get_task(load(spec, overrides))
  params = task.init_params(jax.random.PRNGKey(1))
  full = SyntheticSource(patch_size=P, local_batch=4, seed=0, camera=True).next()
  bare = {k: full[k] for k in ("rgb", "raw")}
  key = jax.random.PRNGKey(2)
  with_cam, _ = task.loss(params, full, key)
  without, _ = task.loss(params, bare, key)
  assert math.isfinite(float(with_cam))
  # the synthetic run's default camera is the synthetic camera the batch names
  np.testing.assert_allclose(float(without), float(with_cam), rtol=1e-5)


def test_bad_camera_configs_fail_clearly():
  with pytest.raises(ConfigError, match="prior.mode"):
    get_task(load("regression_rgb2raw_tiny.py", ["--config.prior.mode=sometimes"]))
  with pytest.raises(ConfigError, match="prior.mode"):
    get_task(load("ssdnet_tiny.py", ["--config.prior.mode=input"]))
  with pytest.raises(ConfigError, match="model.in_channels"):
    get_task(load("ddpm_tiny.py", ["--config.prior.mode=input"]))
  with pytest.raises(ConfigError, match="protocol"):
    get_task(load("regression_rgb2raw_tiny.py:prior=residual",
                  ["--config.data.protocol=packed"]))
  with pytest.raises(ConfigError, match="prior.tone"):
    get_task(load("regression_rgb2raw_tiny.py:prior=both", ["--config.prior.tone=filmic"]))
  for spec in ("regression_rgb2raw_tiny.py:prior=both", "ddpm_tiny.py:prior=both",
               "ssdnet_tiny.py"):
    with pytest.raises(ConfigError, match="prior.zero_init"):
      get_task(load(spec, ["--config.prior.zero_init=true"]))
  with pytest.raises(ConfigError, match="dtdm.upi_tone"):
    get_task(load("dtdm_rgb2raw_tiny.py", ["--config.dtdm.upi_tone=filmic"]))
  with pytest.raises(ConfigError, match="upi.tone"):
    get_task(load("upi.py", ["--config.upi.tone=filmic"]))
  with pytest.raises(ConfigError, match="dtdm.upi_profile"):
    get_task(load("dtdm_rgb2raw_tiny.py", ["--config.dtdm.upi_profile=nearby"]))
  with pytest.raises(ConfigError, match="camera metadata"):
    sources.make_source(load("regression_rgb2raw_tiny.py:prior=residual", [
        "--config.data.source=zrr", "--config.data.dir=/nonexistent"]), "train",
        local_batch=2, process_index=0, process_count=1)
  # old runs' configs have no prior block: the plain network
  cfg = load("regression_rgb2raw_tiny.py")
  with cfg.unlocked():
    del cfg["prior"]
  assert not get_task(cfg).io.camera
