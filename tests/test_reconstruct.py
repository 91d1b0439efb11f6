"""`jisp reconstruct`: images in (JPEG/PNG/TIFF, 8/16-bit, EXIF orientation), DNG + preview
+ 16-bit TIFF out, LibRaw reads the DNG back, the RAW-space inversion is exact, one-line
errors, and the compiled predictor is reused across images."""
import json

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import MICRO, cli, run_jisp
from jisp.core import images
from jisp.core.errors import InputError, OptionError
from jisp.infer import predict, reconstruct
from jisp.tasks.base import PredictOptions
from jisp.train import runs

CFG = "configs/ddpm_tiny.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  run_jisp("train", "--config", CFG, "--workdir", str(wd), *MICRO, "--config.num_steps=2",
           "--config.log_every=1", "--config.checkpoint_every=100", devices=1)
  return wd


@pytest.fixture(scope="module")
def vraw(tmp_path_factory):
  from jisp.data.virtual_camera import write_virtual_raw_dir
  return write_virtual_raw_dir(tmp_path_factory.mktemp("vraw"), 2, seed=4, size=(64, 80))


def _reconstruct(*argv) -> int:
  return cli("reconstruct", *argv)


def _photo(h=45, w=67, seed=0):
  return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _ifd0_tags(path) -> dict:
  with tifffile.TiffFile(path) as tf:
    return {t.name: t.value for t in tf.pages[0].tags.values()}


def _scene(h=48, w=64):
  """A smooth photo (gradients and blobs) of real colours, not noise."""
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * np.sin(3 * y) ** 2, 0.7 - 0.5 * x * y], -1)
  return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def test_reconstruct_writes_dng_preview_and_tiff(run_dir, tmp_path, capsys):
  import rawpy
  src = tmp_path / "in"
  src.mkdir()
  Image.fromarray(_photo()).save(src / "photo.jpg", quality=90)
  Image.fromarray(_photo(seed=1)).save(src / "photo.png")
  out = tmp_path / "out"
  rc = _reconstruct(
      "--workdir", run_dir, src / "photo.jpg", src / "photo.png", "-o", out,
      "--sampler", "ddim", "--steps", "3", "--max-batch", "64", "--no-progress")
  assert rc == 0
  text = capsys.readouterr().out
  assert "default profile" in text  # synthetic-source run: says which profile it used
  for stem in ("photo", "photo_2"):  # same stem twice: the second gets its own name
    with rawpy.imread(str(out / f"{stem}.dng")) as r:
      assert r.raw_image.shape == (44, 66)  # odd size cropped to whole 2x2 tiles
      assert r.color_desc == b"RGBG" and r.raw_pattern.tolist() == [[0, 1], [3, 2]]  # RGGB
      assert r.white_level == 4095 and list(r.black_level_per_channel) == [0, 0, 0, 0]
      assert 0 < r.raw_image.mean() < 4095
      assert r.postprocess().shape == (44, 66, 3)
    t = tifffile.imread(out / f"{stem}_raw16.tif")
    assert t.shape == (45, 67, 3) and t.dtype == np.uint16
    assert np.asarray(Image.open(out / f"{stem}_preview.png")).shape == (45, 67, 3)
    # the DNG names what made it: jisp, the run, its step and the sampler
    tags = _ifd0_tags(out / f"{stem}.dng")
    assert tags["Software"].startswith("jisp ")
    for part in (f"run {run_dir.name} step 2", "ddim (3 NFE"):
      assert part in tags["Software"] and part in tags["ProfileName"]


def test_raw_space_inversion_reproduces_the_camera_mosaic(vraw, tmp_path):
  """The true invisp RAW of a capture, written as a DNG with the capture's own profile,
  gives back the capture's mosaic codes (up to rounding) wherever white balance did not clip."""
  import rawpy
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(vraw[0])
  pair = pairs.make_pair(cap, raw_io.render_srgb(cap), "invisp")
  prof = reconstruct.with_color_matrix(cap.profile())
  paths = reconstruct.write_raw_outputs(tmp_path, "x", pair["raw"], "invisp", prof)
  with rawpy.imread(paths["dng"]) as r:
    got = r.raw_image.astype(np.int64)
    assert r.raw_pattern.shape == (2, 2)
  back = raw_io.read_capture(paths["dng"])
  assert back.pattern == cap.pattern
  np.testing.assert_allclose(back.black_level, cap.black_level)
  assert back.white_level == cap.white_level
  np.testing.assert_allclose(back.wb, cap.wb, rtol=1e-4)
  np.testing.assert_allclose(back.color_matrix, cap.color_matrix, atol=1e-5)
  want = cap.mosaic.astype(np.int64)
  # sites whose white-balanced value stayed below 1 (no clipping) must round-trip
  norm = pairs.normalized_mosaic(cap)
  wb_site = np.tile(np.asarray(cap.wb)[np.array(
      [[{"R": 0, "G": 1, "B": 2}[c] for c in cap.pattern[:2]],
       [{"R": 0, "G": 1, "B": 2}[c] for c in cap.pattern[2:]]])], (32, 40))
  ok = (norm * wb_site < 0.999) & (norm > 0)
  assert ok.mean() > 0.5
  assert np.abs(got - want)[ok].max() <= 2


def test_like_and_manifest_profiles(run_dir, vraw, tmp_path):
  from jisp.data import raw_io
  from jisp.data.prepare import capture_profile
  cap = raw_io.read_capture(vraw[1])
  cfg = runs.load_config(run_dir)
  prof, desc = reconstruct.camera_profile(cfg, like=str(vraw[1]))
  assert prof.pattern == cap.pattern and prof.white_level == cap.white_level
  assert str(vraw[1]) in desc
  # the training data's manifest: the camera with most files wins
  data = tmp_path / "data"
  data.mkdir()
  other = dict(capture_profile(cap), pattern="GBRG" if cap.pattern != "GBRG" else "GRBG",
               files=1)
  cams = {"Cam A": dict(capture_profile(cap), files=5), "Cam B": other}
  (data / "manifest.json").write_text(json.dumps({"protocol": "invisp", "cameras": cams}))
  cfg.data.dir = str(data)
  prof, desc = reconstruct.camera_profile(cfg)
  assert prof.pattern == cap.pattern and "Cam A" in desc
  np.testing.assert_allclose(prof.black_level, cap.black_level)
  with pytest.raises((InputError, OptionError), match="nope.dng"):
    reconstruct.camera_profile(cfg, like=str(tmp_path / "nope.dng"))


def test_like_sets_the_dng_layout(run_dir, vraw, tmp_path):
  import rawpy
  from jisp.data import raw_io
  cap = raw_io.read_capture(vraw[0])
  Image.fromarray(_photo(32, 32)).save(tmp_path / "a.png")
  rc = _reconstruct(
      "--workdir", run_dir, tmp_path / "a.png", "-o", tmp_path / "o", "--like", vraw[0],
      "--sampler", "dpm_solver", "--steps", "3", "--shared-noise", "--no-progress")
  assert rc == 0
  back = raw_io.read_capture(tmp_path / "o" / "a.dng")
  assert back.pattern == cap.pattern
  np.testing.assert_allclose(back.black_level, cap.black_level)
  with rawpy.imread(str(tmp_path / "o" / "a.dng")) as r:
    assert r.white_level == cap.white_level


def test_read_image_orientation_bits_and_errors(tmp_path):
  a = _photo(20, 30)
  ex = Image.Exif()
  ex[274] = 6  # rotate 90 degrees clockwise to show upright
  Image.fromarray(a).save(tmp_path / "rot.png", exif=ex)
  img, bits = images.read_image(tmp_path / "rot.png")
  assert bits == 8 and img.shape == (30, 20, 3)
  np.testing.assert_allclose(img, np.rot90(a, -1) / 255.0, atol=1e-6)

  a16 = (np.random.default_rng(0).random((12, 18, 3)) * 65535).astype(np.uint16)
  tifffile.imwrite(tmp_path / "x16.tif", a16, photometric="rgb",
                   extratags=[(274, "H", 1, 8, True)])
  img, bits = images.read_image(tmp_path / "x16.tif")
  assert bits == 16 and img.shape == (18, 12, 3)
  np.testing.assert_allclose(img, np.rot90(a16, 1) / 65535.0, atol=1e-7)

  Image.fromarray(a[..., 0]).save(tmp_path / "gray.png")
  Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
  tifffile.imwrite(tmp_path / "gray16.tif", a16[..., 0])
  Image.fromarray(a).save(tmp_path / "cut.jpg")
  data = (tmp_path / "cut.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
  (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
  for name, why in [("gray.png", "grayscale"), ("cmyk.jpg", "CMYK"),
                    ("gray16.tif", "grayscale"), ("cut.jpg", "unreadable"),
                    ("junk.jpg", "not an image"), ("missing.png", "no such file")]:
    with pytest.raises(images.ImageError) as e:
      images.read_image(tmp_path / name)
    msg = str(e.value)
    assert name in msg and why in msg and "\n" not in msg


def test_bad_inputs_fail_alone_with_one_line_each(run_dir, tmp_path, capsys):
  Image.fromarray(_photo()[..., 0]).save(tmp_path / "gray.png")
  Image.fromarray(_photo(24, 24)).save(tmp_path / "ok.png")
  rc = _reconstruct(
      "--workdir", run_dir, tmp_path / "gray.png", tmp_path / "ok.png", "-o", tmp_path / "o",
      "--sampler", "ddim", "--steps", "2", "--no-progress")
  assert rc == 1  # one input failed, the other was written
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "gray.png" in err[0] and "grayscale" in err[0]
  assert (tmp_path / "o" / "ok.dng").exists() and not (tmp_path / "o" / "gray.dng").exists()


def test_workdir_without_checkpoint(tmp_path, run_dir, capsys):
  wd = tmp_path / "fresh"
  wd.mkdir()
  (wd / "config.json").write_text((run_dir / "config.json").read_text())
  Image.fromarray(_photo()).save(tmp_path / "a.png")
  rc = _reconstruct("--workdir", wd, tmp_path / "a.png", "-o", tmp_path / "o")
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "\n" not in err and str(wd) in err and "checkpoint" in err
  rc = _reconstruct("--workdir", tmp_path / "nothing", tmp_path / "a.png", "-o", tmp_path / "o")
  assert rc == 2 and "nothing" in capsys.readouterr().err


def test_network_microbatching_gives_the_same_patches(run_dir):
  run = runs.load_run(run_dir)
  opts = PredictOptions(sampler="ddim", steps=2)
  whole = predict.PatchPredictor(run.task, run.params, opts, max_batch=32, net_chunk="none")
  split = predict.PatchPredictor(run.task, run.params, opts, max_batch=32, net_chunk=16)
  assert whole.net_chunk_for(32) is None
  assert split.net_chunk_for(32) == 16 and split.net_chunk_for(16) is None
  assert split.net_chunk_for(24) is None or 24 % split.net_chunk_for(24) == 0
  rgb = np.random.default_rng(3).random((32, 16, 16, 3)).astype(np.float32)
  z = np.random.default_rng(4).standard_normal((32, 16, 16, 3)).astype(np.float32)
  key = jax.random.PRNGKey(1)
  a, b = whole(rgb, z, key), split(rgb, z, key)
  assert not np.allclose(a[:16], a[16:], atol=1e-2)  # distinct patches, so order matters
  np.testing.assert_allclose(b, a, atol=1e-4)


def test_predictor_compiles_once_per_chunk_size_and_is_deterministic(run_dir):
  run = runs.load_run(run_dir)
  pr = predict.PatchPredictor(run.task, run.params, PredictOptions(sampler="ddim", steps=2),
                              max_batch=32)
  key = jax.random.PRNGKey(0)
  outs = []
  for h, w in ((40, 50), (48, 45), (40, 50)):  # 12, 16, 12 patches of 16 (overlap 4)
    rgb = np.random.default_rng(h).random((h, w, 3)).astype(np.float32)
    outs.append(reconstruct.predict_image(pr, rgb, reconstruct.Tiling(overlap=4), key=key))
    assert outs[-1].shape == (h, w, 3) and 0 <= outs[-1].min() and outs[-1].max() <= 1
  assert list(pr.compile_seconds) == [16]  # one compile served all three images (8 devices)
  np.testing.assert_array_equal(outs[0], outs[2])
  # a chunk larger than max_batch is split into several calls of the same compiled size
  big = np.random.default_rng(1).random((70, 16, 16, 3)).astype(np.float32)
  z = np.random.default_rng(2).standard_normal((70, 16, 16, 3)).astype(np.float32)
  y = pr(big, z, key)
  assert y.shape == (70, 16, 16, 3) and sorted(pr.compile_seconds) == [16, 32]
  # each patch's result depends only on its own input and noise, not on its chunk mates
  y2 = pr(big[:5], z[:5], key)
  np.testing.assert_allclose(y2, y[:5], atol=1e-3)  # batch-size float noise only


# --------------------------------------------------------------------------- issue 17

def _exif_jpeg(path, orientation=1):
  """A camera-like JPEG made with Pillow: IFD0 names, EXIF exposure / lens / time, GPS."""
  from PIL.TiffImagePlugin import IFDRational as R
  ex = Image.Exif()
  ex[0x010F], ex[0x0110] = "FUJIFILM", "X-T4"
  ex[0x0112] = orientation
  ex[0x013B], ex[0x8298] = "Ada Lovelace", "(c) 2024 Ada Lovelace"
  sub = ex.get_ifd(0x8769)
  sub[0x9003] = "2024:05:17 18:42:07"            # DateTimeOriginal
  sub[0x9011] = "+02:00"                         # OffsetTimeOriginal
  sub[0x9291] = "250"                            # SubSecTimeOriginal
  sub[0x829A], sub[0x829D] = R(1, 250), R(28, 10)  # ExposureTime, FNumber
  sub[0x8827] = 800                              # ISO
  sub[0x920A] = R(35, 1)                         # FocalLength
  sub[0xA434] = "XF35mmF1.4 R"                   # LensModel
  gps = ex.get_ifd(0x8825)
  gps[0], gps[1], gps[3], gps[5] = b"\x02\x03\x00\x00", "N", "E", b"\x00"
  gps[2] = (R(48, 1), R(8, 1), R(3030, 100))
  gps[4] = (R(11, 1), R(34, 1), R(1200, 100))
  gps[6] = R(519, 1)
  Image.fromarray(_scene(40, 64)).save(path, exif=ex.tobytes(), quality=92)


def test_dng_carries_the_photos_metadata_and_preview(tmp_path, capsys):
  """--method upi (no training): the DNG gets the photo's EXIF, its name, a preview of the
  (upright) input, jisp's names, D65 and BaselineExposure 0."""
  from jisp.core import dng, exif
  _exif_jpeg(tmp_path / "photo.jpg", orientation=6)
  src = exif.read_photo_metadata(tmp_path / "photo.jpg")
  assert src.iso == 800 and src.gps is not None and not src.problems
  rc = _reconstruct("--method", "upi", tmp_path / "photo.jpg", "-o", tmp_path / "o",
                    "--no-progress")
  assert rc == 0
  path = tmp_path / "o" / "photo.dng"
  got = exif.read_photo_metadata(path)
  for field in ("datetime_original", "offset_time_original", "subsec_time_original",
                "exposure_time", "f_number", "iso", "focal_length", "lens_model", "artist",
                "copyright", "gps"):
    assert getattr(got, field) == getattr(src, field), field
  assert got.make == "FUJIFILM" and got.model == "X-T4 (jisp)"  # source kept, marked jisp
  assert got.orientation == 1  # pixels are stored upright
  tags = _ifd0_tags(path)
  assert tags["OriginalRawFileName"] == "photo.jpg"
  assert "method upi" in tags["Software"] and "one deterministic pass" in tags["Software"]
  assert tags["ProfileName"].startswith("jisp UPI average camera")
  assert tags["CalibrationIlluminant1"] == 21
  assert tags["BaselineExposure"][0] == 0
  with tifffile.TiffFile(path) as tf:
    prev = tf.pages[0].asarray()
    raw = tf.pages[0].pages[0] if tf.pages[0].pages else tf.series[1].pages[0]
    assert raw.shape == (64, 40)  # upright: the JPEG's orientation 6 applied
  upright, _ = images.read_image(tmp_path / "photo.jpg")
  np.testing.assert_array_equal(prev, dng.make_preview(images.to_uint8(upright)))
  import rawpy
  with rawpy.imread(str(path)) as r:
    assert r.raw_image_visible.shape == (64, 40) and r.sizes.flip == 0


def test_too_small_for_a_dng_fails_before_sampling(tmp_path):
  from jisp.core import dng
  run = runs.baseline_run("upi")
  pr = predict.PatchPredictor(run.task, run.params, None, max_batch=8)
  Image.fromarray(_photo(dng.MIN_SIDE - 1, 60)).save(tmp_path / "thin.png")
  msgs = []
  failed = reconstruct.reconstruct_files(run, pr, [tmp_path / "thin.png"], tmp_path / "o",
                                         reconstruct.Tiling(8), profile=run.task.default_camera(),
                                         protocol="invisp", warn=msgs.append, log=msgs.append)
  assert failed == 1 and len(msgs) == 1
  assert "thin.png" in msgs[0] and "too small for a DNG" in msgs[0] and "22" in msgs[0]
  assert pr.compile_seconds == {}  # refused before anything was compiled or sampled
  assert not list((tmp_path / "o").iterdir())


def test_check_prints_the_look_round_trip(tmp_path, capsys):
  from jisp.core import dng
  from jisp.infer import look
  Image.fromarray(_scene()).save(tmp_path / "a.png")
  rc = _reconstruct("--method", "upi", tmp_path / "a.png", "-o", tmp_path / "o", "--check",
                    "--no-progress")
  assert rc == 0
  line = [l for l in capsys.readouterr().out.splitlines() if "look round trip" in l]
  assert len(line) == 1 and "a.dng" in line[0]
  want = look.look_metrics(look.render_dng(tmp_path / "o" / "a.dng"),
                           dng.even_crop(images.read_image(tmp_path / "a.png")[0]))
  assert look.describe(want) in line[0] and 15 < want["psnr"] < 60 and want["de2000"] > 0


def test_upi_like_moves_the_dng_to_the_reference_camera(vraw, tmp_path):
  """--method upi --like REF: the DNG takes REF's CFA, levels, white balance and colour
  matrix, and its camera RGB has REF's colour (chromaticity) where the default camera's
  does not."""
  from jisp.core.camera import target_gains
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(vraw[0])
  render = raw_io.render_srgb(cap)
  Image.fromarray(render).save(tmp_path / "shot.png")  # the camera's own rendering
  for name, extra in (("plain", ()), ("like", ("--like", vraw[0]))):
    assert _reconstruct("--method", "upi", tmp_path / "shot.png", "-o", tmp_path / name,
                        "--no-progress", *extra) == 0
  default, like = (raw_io.read_capture(tmp_path / n / "shot.dng") for n in ("plain", "like"))
  assert like.pattern == cap.pattern and like.white_level == cap.white_level
  np.testing.assert_allclose(like.black_level, cap.black_level)
  np.testing.assert_allclose(like.wb, cap.wb, rtol=1e-4)
  np.testing.assert_allclose(like.color_matrix, cap.color_matrix, atol=1e-5)
  assert (default.pattern, default.white_level) != (cap.pattern, cap.white_level) or \
      not np.allclose(default.color_matrix, cap.color_matrix, atol=1e-3)

  lin = np.asarray(pairs.make_pair(cap, render, "linear")["raw"]) / target_gains(cap.wb)
  def colour(x):  # log R/G and B/G of the mean camera RGB: the image's overall colour
    m = np.asarray(x, np.float64).reshape(-1, 3).mean(0)
    return np.log(m[[0, 2]] / m[1])
  def colour_error(tif):
    return float(np.abs(colour(tifffile.imread(tif) / 65535) - colour(lin)).sum())
  e_default = colour_error(tmp_path / "plain" / "shot_raw16.tif")
  e_like = colour_error(tmp_path / "like" / "shot_raw16.tif")
  assert e_like < 0.5 * e_default, (e_like, e_default)
