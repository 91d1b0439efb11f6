"""The look round trip (jisp.infer.look): a DNG of a capture's own RAW renders to exactly
LibRaw's render of the capture (every orientation, through eval's path and through the DNG
`jisp reconstruct` writes, with its metadata and preview), so the metric is infinite / 0
there; it drops as the RAW is perturbed; its numbers are PSNR and skimage's CIEDE2000;
`jisp eval` reports it per image next to the RAW PSNR."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import cli
from jisp.core import dng, exif, images
from jisp.infer import evaluate, look, reconstruct

rawpy = pytest.importorskip("rawpy")
skimage_color = pytest.importorskip("skimage.color")


@pytest.fixture(scope="module")
def vraw(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  return write_virtual_raw_dir(tmp_path_factory.mktemp("vraw"), 2, seed=3, size=(72, 96))


def _capture(path, orientation=None, tmp=None):
  """The capture of `path`, or of a copy of its mosaic stored with another orientation."""
  from jisp.data import raw_io
  cap = raw_io.read_capture(path)
  if orientation is None:
    return cap
  out = Path(tmp) / f"o{orientation}_{Path(path).name}"
  dng.write_dng(out, cap.mosaic, cap.pattern, cap.black_level, cap.white_level,
                dng.neutral_from_wb(cap.wb), cap.color_matrix, orientation=orientation)
  return raw_io.read_capture(out)


def _pair(cap):
  from jisp.data import pairs, raw_io
  ref = raw_io.render_srgb(cap)
  return ref, pairs.make_pair(cap, ref, "invisp")


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 8])
def test_dng_of_the_true_raw_renders_exactly_like_the_source(vraw, tmp_path, orientation):
  cap = _capture(vraw[0], orientation, tmp_path)
  assert cap.orientation == orientation
  ref, pair = _pair(cap)
  setup = evaluate.look_setup(cap)
  codes = reconstruct.raw_to_codes(pair["raw"], "invisp", setup["profile"], orientation)
  np.testing.assert_array_equal(codes, cap.mosaic)  # the RAW space inverts exactly
  got = look.render_mosaic(codes, setup["profile"], orientation=orientation, wb=setup["wb"])
  np.testing.assert_array_equal(got, ref)
  m = look.look_metrics(got, ref)
  assert m == {"psnr": math.inf, "de2000": 0.0}
  # eval's function, against the render kept as floats (as eval holds its input)
  s = evaluate.look_score(pair["raw"], ref.astype(np.float32) / 255.0, "invisp", setup)
  assert s == {"look_psnr": math.inf, "look_de2000": 0.0}


def test_reconstruct_dng_with_metadata_and_preview_renders_like_the_source(vraw, tmp_path):
  """The DNG `jisp reconstruct` writes (preview IFD0 + raw SubIFD, EXIF, BaselineExposure,
  ProfileName) renders exactly as the source: none of it changes LibRaw's rendering."""
  from PIL import Image
  cap = _capture(vraw[1])
  ref, pair = _pair(cap)
  ex = Image.Exif()
  ex[0x010F], ex[0x0110] = "Canon", "Canon EOS R5"
  ex.get_ifd(0x8769)[0x8827] = 400  # ISO
  Image.fromarray(ref).save(tmp_path / "photo.jpg", exif=ex, quality=95)
  meta = exif.read_photo_metadata(tmp_path / "photo.jpg")
  paths = reconstruct.write_raw_outputs(tmp_path, "photo", pair["raw"], "invisp",
                                        reconstruct.with_color_matrix(cap.profile()), metadata=meta,
                                        source_rgb=ref, description="test run")
  got = look.render_dng(paths["dng"])
  assert look.look_metrics(got, ref) == {"psnr": math.inf, "de2000": 0.0}
  assert exif.read_photo_metadata(paths["dng"]).iso == 400


def test_look_drops_as_the_raw_is_perturbed(vraw):
  cap = _capture(vraw[0])
  ref, pair = _pair(cap)
  setup = evaluate.look_setup(cap)
  rng = np.random.default_rng(0)
  scores = []
  for red, noise in ((0.98, 0.0), (0.9, 0.0), (0.9, 0.03)):
    raw = np.array(pair["raw"])
    raw[..., 0] *= red
    raw = np.clip(raw + noise * rng.standard_normal(raw.shape).astype(np.float32), 0, 1)
    scores.append(evaluate.look_score(raw, ref, "invisp", setup))
  psnr = [s["look_psnr"] for s in scores]
  de = [s["look_de2000"] for s in scores]
  assert all(np.isfinite(psnr)) and psnr[0] > psnr[1] > psnr[2] > 10
  assert 0 < de[0] < de[1] < de[2]


def test_metrics_are_psnr_and_skimage_ciede2000(monkeypatch):
  from skimage.color import deltaE_ciede2000, rgb2lab
  rng = np.random.default_rng(1)
  a = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
  want_psnr = 10 * math.log10(255.0 ** 2 / np.mean((a.astype(float) - b) ** 2))
  want_de = float(np.mean(deltaE_ciede2000(rgb2lab(a / 255.0), rgb2lab(b / 255.0))))
  m = look.look_metrics(a, b)
  assert m["psnr"] == pytest.approx(want_psnr, abs=1e-9)
  assert m["de2000"] == pytest.approx(want_de, rel=1e-12)
  monkeypatch.setattr(look, "_CHUNK_PIXELS", 100)  # many row chunks: the same numbers
  m2 = look.look_metrics(a, b)
  assert m2["psnr"] == pytest.approx(m["psnr"], abs=1e-9)
  assert m2["de2000"] == pytest.approx(m["de2000"], rel=1e-9)
  # an 8-bit image held as float32 is the same image; a 16-bit one is compared as is
  assert look.look_metrics(a, a.astype(np.float32) / 255.0) == {"psnr": math.inf, "de2000": 0.0}
  f16 = a.astype(np.float32) / 255.0 + np.float32(0.4 / 255.0)
  assert 50 < look.look_metrics(a, f16)["psnr"] < math.inf
  with pytest.raises(ValueError, match="shapes"):
    look.look_metrics(a, b[:-1])
  assert look.describe({"psnr": math.inf, "de2000": 0.0}) == "PSNR inf dB, mean CIEDE2000 0.00"


def test_sensor_order_inverts_every_orientation():
  x = np.arange(6 * 10).reshape(6, 10)
  for o in range(1, 9):
    np.testing.assert_array_equal(look.sensor_order(images.apply_orientation(x, o), o), x)


def test_eval_reports_the_look_per_image(vraw, tmp_path, capsys):
  rc = cli("eval", "--method", "upi", "--data", vraw[0].parent, "--out", tmp_path / "ev",
           "--no-progress")
  assert rc == 0
  text = capsys.readouterr().out
  assert "look round trip" in text and "look PSNR" in text
  res = json.loads((tmp_path / "ev" / "results.json").read_text())
  assert res["n_images"] == 2
  for e in res["images"]:
    r = e["results"]["overlap16"]
    assert np.isfinite(r["look_psnr"]) and r["look_de2000"] > 0
    # the true RAW loses only the input JPEG; UPI's tone curve is not LibRaw's
    assert e["look_true_raw"]["psnr"] > r["look_psnr"]
    assert e["look_true_raw"]["de2000"] < r["look_de2000"]
  assert res["mean_look_psnr"] == pytest.approx(
      np.mean([e["results"]["overlap16"]["look_psnr"] for e in res["images"]]))


@pytest.mark.skipif(not os.environ.get("JISP_RAW_DIR"), reason="JISP_RAW_DIR not set")
def test_real_camera_files_render_alike_through_jisp_dngs():
  """A native file's RAW through a jisp DNG renders as LibRaw renders the file, up to the
  few pixels its colour-matrix rounding moves (module doc of jisp.infer.look); a DNG source
  is bit-identical."""
  from jisp.data import raw_io
  from jisp.data.prepare import list_raw_files
  files = list_raw_files(os.environ["JISP_RAW_DIR"])
  if not files:
    pytest.skip("no RAW files in JISP_RAW_DIR")
  for path in files:
    try:
      cap = raw_io.read_capture(path)
    except Exception as e:  # noqa: BLE001 -- the folder may hold files LibRaw refuses
      print(f"skipped {path}: {e}")
      continue
    ref = raw_io.render_srgb(cap)
    setup = evaluate.look_setup(cap)
    got = look.render_mosaic(cap.mosaic, setup["profile"], orientation=cap.orientation,
                             wb=setup["wb"])
    m = look.look_metrics(got, ref)
    print(f"{Path(path).name}: {look.describe(m)}, "
          f"{np.mean(np.any(got != ref, axis=-1)):.2e} of pixels differ")
    if Path(path).suffix.lower() == ".dng":
      assert m == {"psnr": math.inf, "de2000": 0.0}, path
    else:
      assert m["psnr"] > 60 and m["de2000"] < 0.05, (path, m)
