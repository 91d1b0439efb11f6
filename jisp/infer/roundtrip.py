"""InvISP's test protocol for tasks that render (io.direction == "both"): real JPEGs.

Per test image, cut into 3 x 3 tiles (the official preprocess_test_patch, the one tile rule
of jisp.core.metrics): the forward rendering is quantised to 8 bits, stored as a real JPEG
(libjpeg via Pillow) at the run's quality and chroma subsampling, re-read and inverted. RAW
PSNR against the RAW target (the protocol space, [0, 1]), RGB PSNR / SSIM of the rendering
against the ground-truth sRGB, and the JPEG's compression ratio and bits per pixel against
the RAW mosaic (paper Eq. 11-12). Numbers are means over all tiles of all files.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import images, metrics
from jisp.infer import compression

TILES = 3


def jpeg_settings(config) -> tuple[int, str]:
  """(quality, subsampling) of a run's JPEG simulator: what its eval must store."""
  j = config.get("jpeg")
  if j is None:
    return 90, "4:2:0"
  return int(j.get("quality", 90)), str(j.get("subsampling", "4:2:0"))


def evaluate_pairs(task, params, pair_list, *, quality=90, subsampling="4:2:0",
                   tiles=TILES) -> dict:
  """The protocol (module docstring) on image pairs.

  pair_list: dicts with 'name', 'raw', 'rgb' (H, W, 3) in [0, 1] and 'bits' (RAW depth).
  Compression is of one JPEG of each whole rendered image (tiles reassembled) against its
  RAW mosaic. Returns means and per-file results.
  """
  fwd = jax.jit(lambda p, x: task.render(p, x[None])[0])
  inv = jax.jit(lambda p, y: task.predict(p, y[None], None, None)[0])
  rows, per_file, jpeg_bytes, bmp_bytes, pixels = [], {}, 0, 0.0, 0
  for pr in pair_list:
    h, w = pr["raw"].shape[:2]
    file_rows = []
    rendered_full = np.zeros((h, w, 3), np.uint8)
    for sy, sx in metrics.tile_slices(h, w, tiles):
      raw, rgb = pr["raw"][sy, sx], pr["rgb"][sy, sx]
      rendered = images.to_uint8(np.asarray(fwd(params, jnp.asarray(raw))))
      rendered_full[sy, sx] = rendered
      decoded = images.jpeg_roundtrip(rendered, quality, subsampling) / 255.0
      raw_hat = np.asarray(inv(params, jnp.asarray(decoded, jnp.float32)))
      file_rows.append({"raw_psnr": float(metrics.psnr(raw_hat, raw)),
                        "rgb_psnr": float(metrics.psnr(rendered / 255.0, rgb)),
                        "rgb_ssim": float(metrics.ssim(rendered / 255.0, rgb))})
    nbytes = len(images.encode_jpeg(rendered_full, quality, subsampling))
    comp = compression.stats(nbytes, h, w, pr["bits"])
    per_file[pr["name"]] = dict(_means(file_rows), **comp)
    jpeg_bytes += nbytes
    bmp_bytes += comp["bmp_bytes"]
    pixels += h * w
    rows += file_rows
  return dict(_means(rows), tiles=len(rows), compression_ratio=bmp_bytes / jpeg_bytes,
              bpp=8.0 * jpeg_bytes / pixels, jpeg_quality=int(quality),
              jpeg_subsampling=subsampling, files=per_file)


def evaluate_video_pairs(task, params, pair_list, *, quality=90, subsampling="4:2:0",
                         frames=8, seed=0) -> dict:
  """The protocol on clips (tasks with io.window > 1): each test pair becomes a clip of
  `frames` frames by the task's own camera motion (`task.video_clip`, a fixed key per file);
  every rendered frame is stored as a real JPEG (a motion-JPEG stream: no H.264 encoder
  ships with jisp's stack), re-read, and the clip inverted with sliding windows. Reported:
  RAW PSNR per frame and its mean, and temporal consistency, the PSNR of the frame-to-frame
  RAW differences (x_t - x_{t-1}) against the truth's (flicker lowers it)."""
  render = jax.jit(lambda p, x: task.render_video(p, x))
  invert = jax.jit(lambda p, y: task.predict_video(p, y))
  per_file, all_frames, all_temporal, jpeg_bytes, pixels = {}, [], [], 0, 0
  for i, pr in enumerate(pair_list):
    raw_v, _ = task.video_clip(jax.random.fold_in(jax.random.PRNGKey(seed), i),
                               jnp.asarray(pr["raw"]), jnp.asarray(pr["rgb"]), frames)
    raw_v = np.asarray(raw_v)
    rendered = images.to_uint8(np.asarray(render(params, raw_v)))
    stored = [images.encode_jpeg(f, quality, subsampling) for f in rendered]
    decoded = np.stack([images.decode_jpeg(b) for b in stored]).astype(np.float32) / 255.0
    raw_hat = np.asarray(invert(params, decoded))
    frame_psnr = [float(metrics.psnr(a, b)) for a, b in zip(raw_hat, raw_v)]
    temporal = float(metrics.psnr(np.diff(raw_hat, axis=0), np.diff(raw_v, axis=0)))
    per_file[pr["name"]] = {"raw_psnr": float(np.mean(frame_psnr)),
                            "raw_psnr_per_frame": frame_psnr, "temporal_psnr": temporal}
    all_frames += frame_psnr
    all_temporal.append(temporal)
    jpeg_bytes += sum(len(b) for b in stored)
    pixels += raw_v.shape[0] * raw_v.shape[1] * raw_v.shape[2]
  return {"raw_psnr": float(np.mean(all_frames)), "temporal_psnr": float(np.mean(all_temporal)),
          "frames": int(frames), "bpp": 8.0 * jpeg_bytes / pixels, "jpeg_quality": int(quality),
          "jpeg_subsampling": subsampling, "files": per_file}


def _means(rows) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
