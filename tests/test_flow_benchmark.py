"""Pieces of the InvISP benchmark: compression (Eq. 11-12), metrics, UPI baseline, the
real-JPEG test protocol (jisp.infer.roundtrip) and the region-split shards."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, options

from jisp.core import images, metrics
from jisp.experiments import flow_benchmark as fb
from jisp.infer import compression, roundtrip


def test_compression_equations():
  assert compression.bmp_bytes(100, 200, 14) == 54 + 100 * 200 * 14 / 8
  assert compression.compression_ratio(1000, 100, 200, 14) == pytest.approx(35054 / 1000)
  assert compression.bits_per_pixel(1000, 100, 200) == pytest.approx(0.4)
  s = compression.stats(2500, 10, 10, 12)
  assert s["compression_ratio"] == pytest.approx(s["bmp_bytes"] / 2500)
  with pytest.raises(ValueError):
    compression.compression_ratio(0, 10, 10, 12)
  with pytest.raises(ValueError):
    compression.bmp_bytes(10, 10, 0)


def test_real_jpeg_sizes_and_roundtrip():
  import skimage.data
  img = skimage.data.astronaut()
  sizes = {q: len(images.encode_jpeg(img, q)) for q in (50, 90)}
  assert sizes[50] < sizes[90]
  data = images.encode_jpeg(img / 255.0, 90)
  assert data[:2] == b"\xff\xd8"                                   # a JPEG stream
  dec = images.decode_jpeg(data) / 255.0
  assert dec.shape == img.shape and 30 < float(metrics.psnr(dec, img / 255.0)) < 50
  # Nikon-like 14-bit RAW of this size vs its q90 JPEG: a ratio well above 1
  assert compression.compression_ratio(len(data), 512, 512, 14) > 5


def test_ssim_and_tiles():
  from skimage.metrics import structural_similarity
  rng = np.random.default_rng(0)
  a = rng.random((40, 50, 3))
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
  ref = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False)
  assert float(metrics.ssim(a, b)) == pytest.approx(ref, abs=2e-3)
  assert float(metrics.ssim(a, a)) == pytest.approx(1.0)
  t = metrics.tile_slices(10, 7)
  assert len(t) == 9 and t[0] == (slice(0, 3), slice(0, 2)) and t[-1] == (slice(6, 10), slice(4, 7))
  assert fb.holdout_start(1324) == 882 and fb.holdout_start(1324) % 2 == 0


def test_upi_inverts_its_own_forward_model():
  from jisp.isp import tone, unprocess
  rng = np.random.default_rng(1)
  cam = rng.uniform(0.02, 0.3, (32, 32, 3)).astype(np.float32)     # dark enough: no clipping
  rgb_cam = np.array([[1.6, -0.4, -0.2], [-0.2, 1.5, -0.3], [0.0, -0.5, 1.5]], np.float32)
  wb = np.array([2.0, 1.0, 1.6], np.float32)
  params = unprocess.CameraParams(rgb2cam=jnp.linalg.inv(rgb_cam), cam2rgb=jnp.asarray(rgb_cam),
                                  wb_gains=jnp.asarray(wb), shot_noise=0.0, read_noise=0.0)
  srgb = np.asarray(unprocess.process(cam, params))
  # the invisp target: white balance with the gains / their max (never above 1, no clip)
  want = np.asarray(tone.gamma_compress(cam * wb / wb.max(), 2.2))
  lin_rgb = np.clip(np.clip(cam * wb, 0, 1) @ rgb_cam.T, 0, 1)
  ok = (lin_rgb.min(-1) > 1e-3) & (lin_rgb.max(-1) < 0.999)           # not clipped in sRGB
  got = fb.upi_raw(srgb, wb, rgb_cam)
  assert ok.mean() > 0.5
  np.testing.assert_allclose(got[ok], want[ok], atol=2e-3)


def test_evaluate_pairs_follows_the_protocol():
  from jisp.core.config import load
  from jisp.tasks.flow_isp import FlowISPTask
  task = FlowISPTask(load(REPO / "configs" / "invisp_tiny.py", ["--config.model.growth=4"]))
  p = jax.jit(task.init_params)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(2)
  raw = rng.random((48, 48, 3)).astype(np.float32)
  rgb = rng.random((48, 48, 3)).astype(np.float32)
  res = roundtrip.evaluate_pairs(task, p, [dict(name="a", raw=raw, rgb=rgb, bits=12)])
  assert res["tiles"] == 9 and set(res["files"]) == {"a"}
  assert res["files"]["a"]["raw_psnr"] == pytest.approx(res["raw_psnr"])
  # by hand, per tile: render, 8 bits, real JPEG q90, decode, inverse (clipped), PSNR;
  # compression of one JPEG of the reassembled rendering
  fwd = jax.jit(lambda x: task.forward(p, x[None])[0])
  inv = jax.jit(lambda y: task.predict(p, y[None], None, options(task))[0])
  full = np.zeros((48, 48, 3), np.uint8)
  psnrs = []
  for sy, sx in metrics.tile_slices(48, 48):
    r8 = images.to_uint8(np.asarray(fwd(raw[sy, sx])))
    full[sy, sx] = r8
    d = images.decode_jpeg(images.encode_jpeg(r8, 90)) / 255.0
    psnrs.append(float(metrics.psnr(np.asarray(inv(d.astype(np.float32))), raw[sy, sx])))
  assert res["raw_psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
  nbytes = len(images.encode_jpeg(full, 90))
  assert res["compression_ratio"] == pytest.approx(
      compression.compression_ratio(nbytes, 48, 48, 12))


def test_region_shards_are_read_by_the_pipeline(tmp_path):
  pytest.importorskip("tensorflow")
  from jisp.data.pipeline import ShardSource
  rng = np.random.default_rng(3)
  pairs = [dict(name=f"f{i}.nef", camera="cam", raw=rng.random((160, 128, 3)).astype(np.float32),
                rgb=rng.random((160, 128, 3)).astype(np.float32)) for i in range(2)]
  man = fb.write_region_shards(pairs, tmp_path, holdout=1 / 3, patch=32, stride=32)
  # rows [0, 106) train -> 3 x 4 patches per file; rows [106, 160) test -> 1 x 4
  assert man["counts"] == {"train": 24, "test": 8}
  src = ShardSource(tmp_path, "test", local_batch=8, seed=0, augment=False, shuffle_buffer=0,
                    repeat=False, with_info=True)
  b = src.next()
  src.close()
  r0 = fb.holdout_start(160, 1 / 3)
  for i in range(len(b["raw"])):
    y, x = (int(v) for v in b["pos"][i])
    fid = b["file_id"][i]
    f = {"f0.nef": 0, "f1.nef": 1}[fid.decode() if isinstance(fid, bytes) else str(fid)]
    np.testing.assert_allclose(b["raw"][i], pairs[f]["raw"][r0 + y:r0 + y + 32, x:x + 32],
                               atol=1e-3)   # float16 storage
