"""The UPI error breakdown on the real files. LibRaw's default adjust_maximum brightened
the 550D's render by a factor no metadata says; the protocol renders without it."""
import json

import numpy as np
import pytest

from jisp.data import raw_io
from jisp.data.prepare import list_raw_files
from jisp.experiments import upi_error


def test_render_maximum_follows_libraws_adjust_maximum(raw_dir):
  """The factor is LibRaw's own: its 16-bit camera-space render with adjust_maximum at
  its default, over the same render with it off."""
  import rawpy
  for path in list_raw_files(raw_dir):
    cap = raw_io.read_capture(path)
    white, render_white = raw_io.render_maximum(cap, raw_io.LIBRAW_ADJUST_MAXIMUM)
    assert raw_io.render_maximum(cap) == (white, white)   # the protocol's: off
    kw = dict(no_auto_bright=True, output_bps=16, half_size=True, user_flip=0, gamma=(1, 1),
              output_color=rawpy.ColorSpace.raw, user_wb=[1.0, 1.0, 1.0, 1.0])
    with rawpy.imread(str(path)) as r:
      on = r.postprocess(**kw).astype(np.float64)
    with rawpy.imread(str(path)) as r:
      off = r.postprocess(adjust_maximum_thr=0.0, **kw).astype(np.float64)
    m = (on < 60000) & (off > 1000)
    np.testing.assert_allclose(np.median(on[m] / off[m]), white / render_white, rtol=2e-3)


def test_the_protocol_render_ignores_the_pictures_own_maximum(raw_dir):
  """The 550D file's data reach 0.78 of its white level: LibRaw's default would render
  it 1.285x brighter; the protocol's render is LibRaw's with adjust_maximum off."""
  dng = raw_dir / "canon_eos_550d_magiclantern_colorchart.dng"
  if not dng.is_file():
    pytest.skip(f"{dng} missing")
  import rawpy
  cap = raw_io.read_capture(dng)
  ours = raw_io.render_srgb(cap, oriented=False)
  kw = dict(no_auto_bright=True, output_bps=8, user_flip=0, use_camera_wb=True,
            output_color=rawpy.ColorSpace.sRGB, gamma=(2.222, 4.5))
  with rawpy.imread(str(dng)) as r:
    off = r.postprocess(adjust_maximum_thr=0.0, **kw)[:ours.shape[0], :ours.shape[1]]
  with rawpy.imread(str(dng)) as r:
    default = r.postprocess(**kw)[:ours.shape[0], :ours.shape[1]]
  assert cap.wb_source == "camera"
  np.testing.assert_array_equal(ours, off)
  assert default.astype(float).mean() > ours.astype(float).mean() + 5


def test_the_550ds_upi_error_needs_no_global_gain(raw_dir, capsys):
  dng = raw_dir / "canon_eos_550d_magiclantern_colorchart.dng"
  if not dng.is_file():
    pytest.skip(f"{dng} missing")
  assert upi_error.main([str(dng), "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["render_gain"] == 1.0
  assert r["libraw_default_gain"] > 1.2     # data max 12128 of white 15000, black 2056
  assert all(0.97 < g < 1.03 for g in r["gain_fit"])
  assert r["gain_fit_psnr"] < r["upi_psnr"] + 0.5


def test_the_d30s_error_is_mostly_upis_tone_model(raw_dir, capsys):
  """UPI assumes Brooks et al.'s smoothstep and gamma 2.2; LibRaw rendered the D30 with its
  BT.709-style curve and no tone curve: inverting that instead removes most of the error."""
  crw = raw_dir / "canon_eos_d30_rawsamples.crw"
  if not crw.is_file():
    pytest.skip(f"{crw} missing")
  assert upi_error.main([str(crw), "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["render_gain"] == 1.0
  assert r["exact_tone_psnr"] > r["upi_psnr"] + 3.0


def test_a_file_that_is_not_raw_is_one_line_naming_it(tmp_path, capsys):
  bad = tmp_path / "photo.nef"
  bad.write_bytes(b"not a raw file" * 100)
  assert upi_error.main([str(bad)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("upi_error: error:") and "photo.nef" in err[0]
