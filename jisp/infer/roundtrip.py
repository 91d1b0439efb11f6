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


def _means(rows) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
