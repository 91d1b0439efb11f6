"""`jisp compare` and the baselines as runs: the SID U-Net's parameter count, and a
comparison of two tiny trained runs + UPI + two broken runs on virtual-camera RAW files
(the three output files, the rows, the failures marked while the others still run, and the
same numbers `jisp eval` gives for each method)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import cli
from jisp.core.config import load

COMMON = ["--config.batch_size=8", "--config.data.patch_size=16", "--config.num_steps=2",
          "--config.log_every=1", "--config.checkpoint_every=100", "--config.eval_every=100",
          "--config.eval_batches=1"]
RUNS = {"regression": ("configs/regression_rgb2raw_tiny.py",
                       ["--config.model.base_channels=8", "--config.model.num_groups=4"]),
        "flow": ("configs/invisp_tiny.py", ["--config.model.growth=4"])}


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_sid_unet_config_has_the_papers_parameter_count():
  from jisp.models import sid_unet
  from jisp.tasks import get_task
  for arg in (None, "tiny"):
    task = get_task(load("unet_sid.py" if arg is None else f"unet_sid.py:{arg}"))
    shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    assert _count(shapes) == 7_762_572  # sRGB space-to-depth in, 12 -> depth-to-space out
    assert task.io.in_channels == 3 and task.io.out_channels == 3
  sid = sid_unet.SIDUNet(head="sid")  # SID's own 4 -> 12 use: the count its code gives
  key = jax.random.PRNGKey(0)
  x = jnp.zeros((1, 32, 32, 4))
  assert _count(jax.eval_shape(lambda k: sid.init(k, x), key)) == 7_760_268
  img = jnp.zeros((1, 50, 70, 3))
  y = jax.eval_shape(lambda k: task.model.apply(task.model.init(k, img), img), key)
  assert y.shape == (1, 50, 70, 3)  # sides that are not multiples of 32 are padded back


def test_space_to_depth_round_trip_and_order():
  from jisp.models.sid_unet import depth_to_space, space_to_depth
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  s = np.asarray(space_to_depth(x))
  assert s.shape == (2, 2, 3, 12)
  # TensorFlow's order: channel (2 i + j) * C + c holds pixel (2h + i, 2w + j, c)
  assert s[1, 1, 2, (2 * 1 + 0) * 3 + 2] == x[1, 3, 4, 2]
  np.testing.assert_array_equal(np.asarray(depth_to_space(s)), x)


@pytest.fixture(scope="module")
def raws(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  return write_virtual_raw_dir(tmp_path_factory.mktemp("raws"), 2, seed=11, size=(48, 64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  out = {}
  for name, (cfg, micro) in RUNS.items():
    assert cli("train", "--config", cfg, "--workdir", root / name, *COMMON, *micro) == 0
    out[name] = root / name
  # a run whose checkpoint is garbage (fails to load) ...
  broken = root / "broken"
  shutil.copytree(out["regression"], broken)
  for f in (broken / "checkpoints").rglob("*"):
    if f.is_file():
      f.write_bytes(b"not a checkpoint")
  # ... and one that loads but was trained in another protocol (fails when compared)
  other = root / "linear_run"
  shutil.copytree(out["regression"], other)
  cfg = json.loads((other / "config.json").read_text())
  cfg["data"]["protocol"] = "linear"
  (other / "config.json").write_text(json.dumps(cfg))
  out.update(broken=broken, other=other)
  return out


def test_compare_writes_the_table_json_and_figure_and_survives_failures(
    raws, trained, tmp_path, capsys):
  out = tmp_path / "cmp"
  code = cli("compare", trained["regression"], trained["flow"], trained["broken"],
             trained["other"], "--baseline", "upi", "--data", raws[0].parent, "-o", out,
             "--no-progress", "--max-batch", "32", "--crop", "32")
  capsys.readouterr()
  assert code == 1  # some methods failed; every file is still written
  res = json.loads((out / "compare.json").read_text())
  rows = {r["name"]: r for r in res["methods"]}
  assert list(rows) == ["regression", "flow", "broken", "linear_run", "upi"]
  assert res["protocol"] == "invisp" and len(res["files"]) == 2
  for name in ("regression", "flow", "upi"):
    r = rows[name]
    assert r["status"] == "ok" and r["error"] is None, r
    assert len(r["images"]) == 2 and all(np.isfinite(i["raw_psnr"]) for i in r["images"])
    assert set(r["per_camera"]) == set(res["cameras"])
    assert r["seconds_per_image"] > 0 and r["nfe"] == 1
  assert rows["upi"]["steps"] == 0 and rows["upi"]["params"] == 9
  assert rows["regression"]["steps"] == 2 and rows["regression"]["params"] > 0
  # only the system that renders gets the RGB and own-rendering columns
  assert rows["flow"]["renders"] and np.isfinite(rows["flow"]["rgb_psnr"])
  assert np.isfinite(rows["flow"]["own_render_raw_psnr"])
  assert rows["regression"]["rgb_psnr"] is None and rows["upi"]["own_render_raw_psnr"] is None
  assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
  assert rows["linear_run"]["status"] == "failed"
  assert "protocol 'linear'" in rows["linear_run"]["error"]

  md = (out / "compare.md").read_text()
  lines = {l.split("|")[1].strip(): l for l in md.splitlines() if l.startswith("| ")}
  assert set(rows) <= set(lines)
  assert "FAILED" in lines["broken"] and "FAILED" in lines["linear_run"]
  assert "FAILED" not in lines["regression"]
  assert lines["flow"].split("|")[2].strip() == rows["flow"]["task"]  # the task column
  assert f"{rows['upi']['mean_raw_psnr']:.2f}" in lines["upi"]
  png = np.asarray(Image.open(out / "compare.png"))
  assert png.shape[1] == 7 * 160 + 6 * 4  # input, truth and five methods

  # every method scored on the same input by the same code as `jisp eval`
  for name, args in (("regression", ["--workdir", trained["regression"]]),
                     ("upi", ["--method", "upi", "--out", tmp_path / "eval_upi"])):
    assert cli("eval", *args, "--data", raws[0].parent, "--json", "--max-batch", "32",
               "--no-progress") == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(ev["mean_raw_psnr"] - rows[name]["mean_raw_psnr"]) < 1e-4, name


def test_compare_refuses_no_methods_and_unknown_baselines(raws, tmp_path, capsys):
  assert cli("compare", "--data", raws[0].parent, "-o", tmp_path / "x") == 2
  assert cli("compare", "--baseline", "nope", "--data", raws[0].parent,
             "-o", tmp_path / "x") == 2
  err = capsys.readouterr().err
  assert "at least one RUN" in err and "'nope'" in err


def test_compare_runs_in_the_prepared_folders_protocol_and_refuses_other_runs(
    raws, trained, tmp_path, capsys):
  # A prepared folder's manifest: compare reads its protocol and its test-split file list
  # only (the RAW files are re-paired by this jisp), so the listing is all it needs.
  data = tmp_path / "prepared_linear"
  data.mkdir()
  (data / "manifest.json").write_text(json.dumps({
      "protocol": "linear", "raw_dir": str(raws[0].parent),
      "files": [{"path": p.name, "status": "ok", "split": "test", "camera": "virtual"}
                for p in raws]}))
  out = tmp_path / "cmp"
  code = cli("compare", trained["regression"], trained["other"], "--baseline", "upi",
             "--data", data, "-o", out, "--no-progress", "--max-batch", "32", "--crop", "32")
  capsys.readouterr()
  assert code == 1
  res = json.loads((out / "compare.json").read_text())
  rows = {r["name"]: r for r in res["methods"]}
  assert res["protocol"] == "linear"  # the folder's, not the first run's (invisp)
  err = rows["regression"]["error"]
  assert rows["regression"]["status"] == "failed" and "\n" not in err
  assert "refused" in err and "'invisp'" in err and "'linear'" in err
  assert rows["linear_run"]["status"] == "ok" and rows["upi"]["status"] == "ok"
  assert set(res["cameras"]) == {"virtual"}
  # asking for another protocol than the folder's is one line, exit 2, nothing run
  assert cli("compare", trained["other"], "--data", data, "--protocol", "invisp",
             "-o", tmp_path / "y") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "manifest.json" in err[0] and "'linear'" in err[0]
  assert not (tmp_path / "y" / "compare.json").exists()


def test_leave_one_camera_out_needs_several_cameras(tmp_path, capsys):
  from helpers import cli
  from jisp.data.virtual_camera import write_virtual_raw_dir
  raws = write_virtual_raw_dir(tmp_path / "raws", 1, seed=1, size=(32, 48))  # one camera
  assert cli("compare", "--leave-one-camera-out", "--data", str(raws[0].parent), "-o",
             str(tmp_path / "out")) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "2 or more cameras" in err and str(raws[0].parent) in err
  assert cli("compare", "--leave-one-camera-out", "--data", str(raws[0].parent),
             "--loco-methods", "upi2", "-o", str(tmp_path / "out")) == 2
  assert "upi2" in capsys.readouterr().err
