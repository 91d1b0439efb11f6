"""Inference under several processes: `jisp eval`, `reconstruct` and `bench predict` started
as 2 processes x 2 CPU devices (jax.distributed on localhost) give the numbers and files
of one process, and only process 0 writes them."""
import json
import re
import socket
import subprocess

import numpy as np
import pytest

from helpers import MICRO, REPO, env, jisp_cmd, run_jisp

CFG = "configs/ddpm_tiny.py"
# Gloo (the collectives' library) prints a connection message per rank from its own threads,
# writing it piece by piece (text, rank, text, count, text, count, newline), so the pieces of
# two messages interleave and a number may land on a line of its own.
_GLOO_PIECE = re.compile(r"\[Gloo\]\s*Rank\s*|\s*is connected to\s*"
                         r"|\s*peer ranks\.\s*Expected number of connected peer ranks is\s*:\s*")
SAMPLER = ["--sampler", "ddim", "--steps", "2", "--eta", "1", "--max-batch", "16"]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _own_lines(stdout: str) -> list[str]:
  """The lines a process printed itself: its stdout less Gloo's messages, however split."""
  lines = _GLOO_PIECE.sub("\n", stdout).splitlines()
  return [ln for ln in lines if ln.strip() and not ln.strip().isdigit()]


def _two_processes(*args, timeout=300):
  """`jisp ARGS` as processes 0 and 1 of 2 (2 CPU devices each); both must exit 0."""
  coord = f"127.0.0.1:{_port()}"
  procs = [subprocess.Popen(jisp_cmd(*args, "--coordinator", coord, "--num-processes", "2",
                                     "--process-id", str(i)),
                            env=env(2, JISP_STARTUP_TIMEOUT=120), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, f"process failed ({p.returncode}):\n{err[-3000:]}"
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  wd = tmp_path_factory.mktemp("run")
  run_jisp("train", "--config", CFG, "--workdir", str(wd), *MICRO, "--config.num_steps=2",
           "--config.log_every=1", "--config.checkpoint_every=100", devices=1)
  raws = write_virtual_raw_dir(tmp_path_factory.mktemp("raws"), 2, seed=3, size=(40, 56))
  return wd, raws


def test_eval_on_two_processes_scores_as_one(setup, tmp_path):
  wd, raws = setup
  one, two = tmp_path / "one", tmp_path / "two"
  run_jisp("eval", "--workdir", str(wd), "--data", str(raws[0].parent), "--out", str(one),
           "--json", "--no-progress", *SAMPLER, devices=4)
  outs = _two_processes("eval", "--workdir", str(wd), "--data", str(raws[0].parent),
                        "--out", str(two), "--json", "--no-progress", *SAMPLER)
  a = json.loads((one / "results.json").read_text())
  b = json.loads((two / "results.json").read_text())
  name = a["settings"][0]["name"]
  pa = [e["results"][name]["raw_psnr"] for e in a["images"]]
  pb = [e["results"][name]["raw_psnr"] for e in b["images"]]
  assert len(pa) == 2 and np.allclose(pa, pb, rtol=1e-6, atol=0), (pa, pb)
  # process 0 printed the JSON it wrote; process 1 printed nothing of its own.
  printed = [_own_lines(o) for o in outs]
  assert json.loads(printed[0][-1])["mean_raw_psnr"] == b["mean_raw_psnr"]
  assert printed[1] == []


def test_reconstruct_on_two_processes_writes_one_identical_dng(setup, tmp_path):
  wd, raws = setup
  from jisp.data import raw_io
  from jisp.core import images
  photo = tmp_path / "photo.png"
  images.write_png(photo, raw_io.render_srgb(raw_io.read_capture(raws[0])))
  one, two = tmp_path / "one", tmp_path / "two"
  run_jisp("reconstruct", "--workdir", str(wd), str(photo), "-o", str(one), "--no-progress",
           *SAMPLER, devices=4)
  _two_processes("reconstruct", "--workdir", str(wd), str(photo), "-o", str(two),
                 "--no-progress", *SAMPLER)
  import rawpy
  with rawpy.imread(str(one / "photo.dng")) as r1, rawpy.imread(str(two / "photo.dng")) as r2:
    m1, m2 = r1.raw_image.copy(), r2.raw_image.copy()
  assert m1.shape == m2.shape and np.abs(m1.astype(int) - m2.astype(int)).max() <= 1
  assert not list(two.glob(".*.tiles"))  # no resume store across processes
