"""The JAX-only install (`pip install jisp`, no `[data]` extra): training from the in-memory
source, `jisp bench` and `jisp reconstruct` PNG/JPEG -> DNG work with TensorFlow, TFDS,
rawpy and scikit-image unimportable, as on an accelerator image."""
import subprocess
import sys

import numpy as np
from PIL import Image

from helpers import MICRO, REPO, env

CFG = "configs/ddpm_tiny.py"

_BLOCKED = r"""
import sys
HEAVY = ("tensorflow", "tensorflow_datasets", "rawpy", "skimage")
for name in HEAVY:  # as if not installed: `import x` fails, find_spec(x) says absent
  sys.modules[name] = None
from jisp.cli import main
rc = main(sys.argv[1:])
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in HEAVY)
assert not loaded, loaded
sys.exit(rc)
"""


def _jisp_blocked(*args):
  p = subprocess.run([sys.executable, "-c", _BLOCKED, *map(str, args)], env=env(2), cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def test_train_bench_and_reconstruct_without_the_data_stack(tmp_path):
  wd = tmp_path / "run"
  _jisp_blocked("train", "--config", CFG, "--workdir", wd, *MICRO, "--config.num_steps=2",
                "--config.log_every=1", "--config.checkpoint_every=100")
  assert (wd / "checkpoints" / "2").is_dir()
  _jisp_blocked("bench", "train", "--config", CFG, *MICRO, "--steps", "1", "--json")
  photo = tmp_path / "photo.jpg"
  Image.fromarray((np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)).save(
      photo, quality=90)
  p = _jisp_blocked("reconstruct", "--workdir", wd, photo, "-o", tmp_path / "out",
                    "--sampler", "ddim", "--steps", "2", "--no-progress")
  assert "photo.dng" in p.stdout
  import rawpy  # the check itself may use LibRaw
  with rawpy.imread(str(tmp_path / "out" / "photo.dng")) as r:
    assert r.raw_image_visible.shape == (24, 30)
