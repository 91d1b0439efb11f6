"""The `jisp` command itself: sub-commands exist and bad input fails with one line."""
from helpers import run_jisp


def test_help_lists_every_command():
  p = run_jisp("--help")
  for c in ("prepare", "train", "reconstruct", "eval", "bench", "demo"):
    assert c in p.stdout


def test_reconstruct_without_checkpoint_is_one_clear_line(tmp_path):
  (tmp_path / "run").mkdir()
  img = tmp_path / "x.png"
  from PIL import Image
  Image.new("RGB", (40, 40), (120, 30, 200)).save(img)
  p = run_jisp("reconstruct", "--workdir", str(tmp_path / "run"), str(img), "-o",
               str(tmp_path / "out"), check=False)
  assert p.returncode != 0
  errs = [l for l in p.stderr.splitlines() if "error" in l.lower()]
  assert len(errs) == 1 and str(tmp_path / "run") in errs[0]
  assert not list((tmp_path).glob("out/*.dng"))


def test_unknown_demo_stage_and_stray_argument(tmp_path):
  p = run_jisp("demo", "--out", str(tmp_path), "--only", "nope", check=False)
  assert p.returncode == 2 and "unknown stage 'nope'" in p.stderr
  assert len(p.stderr.strip().splitlines()) == 1
  p = run_jisp("train", "--config", "configs/ddpm_tiny.py", "--workdir", str(tmp_path / "w"),
               "--bogus", check=False)
  assert p.returncode != 0 and "unrecognized arguments: --bogus" in p.stderr
