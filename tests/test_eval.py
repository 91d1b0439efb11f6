"""`jisp eval`: metrics against independent implementations, the DESIGN.md protocol on
virtual-camera RAWs (a RAW folder and a prepared folder's test split), results.json,
report.png and the tiling comparison."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import MICRO, cli, run_jisp
from jisp.core import metrics
from jisp.infer import evaluate, report

CFG = "configs/ddpm_tiny.py"


# ------------------------------------------------------------------ metrics

def test_psnr_and_tiled_psnr_match_skimage():
  from skimage.metrics import peak_signal_noise_ratio as sk_psnr
  rng = np.random.default_rng(0)
  a = rng.random((31, 47, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
  assert abs(float(metrics.psnr(a, b)) - sk_psnr(a, b, data_range=1.0)) < 1e-3
  # 3x3 tiles, the official InvISP rule int(i*H/3): rows 10/10/11, columns 15/16/16
  rows, cols = [(0, 10), (10, 20), (20, 31)], [(0, 15), (15, 31), (31, 47)]
  want = np.mean([sk_psnr(a[y0:y1, x0:x1], b[y0:y1, x0:x1], data_range=1.0)
                  for y0, y1 in rows for x0, x1 in cols])
  assert abs(metrics.tiled_psnr(a, b) - want) < 1e-3
  # tiles weight regions evenly: a flawless half raises the tiled mean above the global PSNR
  c = b.copy()
  c[:, :24] = a[:, :24]
  assert metrics.tiled_psnr(a, c) > float(metrics.psnr(a, c)) + 5
  assert float(metrics.psnr(a, a)) == metrics.MAX_PSNR


def test_ssim_matches_skimage():
  from skimage.metrics import structural_similarity
  rng = np.random.default_rng(1)
  a = rng.random((40, 52, 3)).astype(np.float32)
  for noise in (0.02, 0.2):
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)
    want = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)
    assert abs(float(metrics.ssim(a, b)) - want) < 1e-4
  assert abs(float(metrics.ssim(a, a)) - 1) < 1e-6


def test_report_image_layout():
  rng = np.random.default_rng(0)
  x = rng.random((30, 40, 3)).astype(np.float32)
  rows = [("a.dng", x, x * 0.9, x, 30.0), ("b.dng", x[:20], x[:20], x[:20], 40.0)]
  img = report.report_image(rows, width=64)
  assert img.shape[1] == 4 * 64 + 3 * 4 and img.dtype == np.uint8
  # the error map of a perfect reconstruction is black, of a 10% error mostly bright
  assert report.error_map(x, x).max() == 0
  assert report.error_map(x + 0.1, x).min() > 0.99


# ------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  wd = tmp_path_factory.mktemp("run")
  run_jisp("train", "--config", CFG, "--workdir", str(wd), *MICRO, "--config.num_steps=2",
           "--config.log_every=1", "--config.checkpoint_every=100", devices=1)
  raws = write_virtual_raw_dir(tmp_path_factory.mktemp("raws"), 3, seed=7, size=(48, 64))
  return wd, raws


def _eval(*argv) -> int:
  return cli("eval", *argv)


def test_eval_raw_folder_writes_results_and_report(setup, capsys):
  wd, raws = setup
  rc = _eval("--workdir", wd, "--data", raws[0].parent, "--json",
             "--sampler", "ddim", "--steps", "2", "--max-batch", "32")
  assert rc == 0
  printed = json.loads(capsys.readouterr().out.strip())
  saved = json.loads((wd / "eval" / "results.json").read_text())
  assert printed == saved
  assert saved["n_images"] == 3 and saved["nfe"] == 2 and saved["sampler"] == "ddim"
  psnrs = [e["results"][saved["settings"][0]["name"]]["raw_psnr"] for e in saved["images"]]
  assert all(np.isfinite(psnrs)) and abs(np.mean(psnrs) - saved["mean_raw_psnr"]) < 1e-9
  assert saved["seconds_per_image"] > 0
  # the scores are those of the true pairs: an independent recomputation of image 0
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(raws[0])
  true = pairs.make_pair(cap, raw_io.render_srgb(cap), "invisp")["raw"]
  assert saved["images"][0]["size"] == list(true.shape[:2])
  rep = np.asarray(Image.open(wd / "eval" / "report.png"))
  assert rep.shape[1] == 4 * 256 + 12 and rep.shape[0] > 3 * 48


def test_eval_prepared_folder_uses_its_test_split(setup, tmp_path):
  wd, raws = setup
  files = [{"path": p.name, "status": "ok", "split": s}
           for p, s in zip(raws, ("test", "train", "test"))]
  files.append({"path": "broken.dng", "status": "skipped", "reason": "x"})
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"raw_dir": str(raws[0].parent), "protocol": "invisp", "files": files}))
  assert _eval("--workdir", wd, "--data", tmp_path, "--json", "--sampler", "ddim", "--steps",
               "2", "--tiling-report", "--max-batch", "32", "--overlap", "8", "--eta", "1") == 0
  res = json.loads((wd / "eval" / "results.json").read_text())
  assert res["sampler_options"] == {"eta": 1.0, "spacing": "trailing"}
  assert [e["file"] for e in res["images"]] == [str(raws[0]), str(raws[2])]
  names = [s["name"] for s in res["settings"]]
  assert names == ["grid", "overlap8", "overlap8+shared"]
  for s in res["settings"]:
    assert np.isfinite(s["mean_raw_psnr"]) and s["mean_seam_ratio"] > 0
  table = evaluate.tiling_table(res["settings"])
  assert table.count("\n") == 4 and "overlap8+shared" in table


def test_eval_errors_are_one_line(setup, tmp_path, capsys):
  wd, _ = setup
  assert _eval("--workdir", wd, "--data", tmp_path) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and str(tmp_path) in err and "no manifest.json" in err
  (tmp_path / "manifest.json").write_text(json.dumps({"raw_dir": str(tmp_path), "files": []}))
  assert _eval("--workdir", wd, "--data", tmp_path) == 2
  assert "no test-split files" in capsys.readouterr().err
  raws_dir = setup[1][0].parent
  assert _eval("--workdir", wd, "--data", raws_dir, "--sampler", "dpm_solver", "--eta", "1") == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "--eta is an option of the ddim sampler" in err


def test_eval_on_a_folder_of_another_protocol_is_refused_and_keeps_results(setup, tmp_path,
                                                                          capsys):
  """The audit's silent 11.56 dB: a folder prepared in another RAW space is refused before
  anything is scored, and the run's last results.json stays as it was."""
  wd, raws = setup
  out = tmp_path / "eval"
  out.mkdir()
  (out / "results.json").write_text('{"kept": true}')
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"raw_dir": str(raws[0].parent), "protocol": "linear",
       "files": [{"path": raws[0].name, "status": "ok", "split": "test"}]}))
  assert _eval("--workdir", wd, "--data", tmp_path, "--out", out) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "'linear'" in err and "'invisp'" in err
  assert json.loads((out / "results.json").read_text()) == {"kept": True}


def test_eval_samples_scores_the_mean_of_independent_samples(setup, tmp_path, capsys):
  """--samples 2 scores the mean of two samples: the --samples 1 prediction (key
  fold_in(PRNGKey(seed), image)) and one drawn with that key folded with 1, recomputed
  here outside the eval loop; it costs twice the network calls."""
  import jax
  from jisp.infer import reconstruct
  from jisp.infer.predict import PatchPredictor
  from jisp.tasks.base import PredictOptions
  from jisp.train import runs
  wd, raws = setup
  flags = ("--workdir", wd, "--data", raws[0].parent, "--json", "--sampler", "ddim",
           "--steps", "2", "--eta", "1", "--max-batch", "32", "--max-images", "1", "--grid")
  assert _eval(*flags, "--out", tmp_path / "one") == 0
  assert _eval(*flags, "--samples", "2", "--out", tmp_path / "two") == 0
  capsys.readouterr()
  one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
  assert (one["samples"], two["samples"]) == (1, 2)
  assert (one["nfe"], two["nfe"], two["nfe_per_sample"]) == (2, 4, 2)

  run = runs.load_run(wd)
  pred = PatchPredictor(run.task, run.params, PredictOptions(sampler="ddim", steps=2, eta=1.0),
                        max_batch=32)
  pair = evaluate.load_pair(raws[0], "invisp")
  inp, true = pair["rgb"], pair["raw"]
  setting = evaluate.tilings(pred.patch, grid=True)[0]
  key0 = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  a, b = (np.asarray(reconstruct.predict_image(pred, inp, setting, key=k), np.float64)
          for k in (key0, jax.random.fold_in(key0, 1)))
  assert np.abs(a - b).max() > 1e-3  # two different samples
  layout = setting.layout(inp.shape, pred.patch)
  want_one = evaluate.score(a.astype(np.float32), true, layout)["raw_psnr"]
  want_two = evaluate.score(((a + b) / 2).astype(np.float32), true, layout)["raw_psnr"]
  assert abs(one["mean_raw_psnr"] - want_one) < 1e-4
  assert abs(two["mean_raw_psnr"] - want_two) < 1e-4 and abs(want_two - want_one) > 1e-3


def test_eval_samples_is_refused_where_nothing_is_sampled(setup, capsys):
  wd, raws = setup
  assert _eval("--workdir", wd, "--data", raws[0].parent, "--samples", "0") == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "--samples must be >= 1, got 0" in err
  assert _eval("--method", "upi", "--data", raws[0].parent, "--samples", "2") == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "--samples 2" in err and "every sample would be the same" in err
