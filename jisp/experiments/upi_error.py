"""Where UPI's error on a camera file comes from: what a learned residual can and cannot fix.

    python -m jisp.experiments.upi_error FILE [FILE ...] [--protocol invisp] [--json]

For each RAW file, the pair `jisp eval` scores (LibRaw's render through the JPEG round
trip, and the RAW target) and UPI's estimate with the file's own camera metadata:
  upi_psnr           RAW PSNR of that estimate (the whole image)
  bias, rms          per channel (R, G, B) of estimate - target
  clipped_share      the share of the squared error on pixels whose sRGB has a channel at
                     0 or 255 (what clipping hides; a network can only guess it back)
  gain_fit_psnr      RAW PSNR after the best single gain per channel (least squares):
                     the part of the error that is a global exposure / white-balance
                     mismatch rather than something local
  exact_tone_psnr    RAW PSNR of UPI with the render's own tone inverted instead of UPI's
                     model (Brooks et al.'s smoothstep and gamma 2.2): LibRaw's BT.709-style
                     curve and no tone curve (prior.tone=render, `--method upi_render`),
                     which is what a network can learn from any camera
  render_gain        the factor the protocol's render brightened the linear signal by
                     beyond the metadata (LibRaw's adjust_maximum, `raw_io.render_maximum`):
                     1, since pair protocol version 3 renders with it off
  libraw_default_gain  the same factor at LibRaw's default threshold, which protocol
                     version 2 used: no camera metadata records it, so neither UPI nor a
                     network trained on other files can know it
One JSON line per file with --json, else a short table.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from jisp.core.metrics import psnr


def analyse(path, protocol: str = "invisp") -> dict:
  from jisp.data import raw_io
  from jisp.infer import evaluate
  from jisp.isp import prior
  pair = evaluate.load_pair(path, protocol)
  rgb, raw = pair["rgb"], pair["raw"]
  est = np.asarray(prior.rgb_to_raw(rgb[None], pair["camera"], protocol))[0]
  err = est.astype(np.float64) - raw
  sq = np.square(err)
  clipped = (rgb.max(-1) >= 254.5 / 255) | (rgb.min(-1) <= 0.5 / 255)
  flat_e, flat_t = est.reshape(-1, 3).astype(np.float64), raw.reshape(-1, 3).astype(np.float64)
  gain = (flat_e * flat_t).sum(0) / np.maximum((flat_e * flat_e).sum(0), 1e-12)
  exact = np.asarray(prior.rgb_to_raw(rgb[None], pair["camera"], protocol,
                                      tone_model="render"))[0]   # `--method upi_render`
  cap = raw_io.read_capture(path)
  white, render_white = raw_io.render_maximum(cap)
  _, default_white = raw_io.render_maximum(cap, raw_io.LIBRAW_ADJUST_MAXIMUM)
  return {"file": str(path), "protocol": protocol, "camera": cap.camera,
          "upi_psnr": round(float(psnr(est, raw)), 3),
          "bias": [round(float(v), 5) for v in err.reshape(-1, 3).mean(0)],
          "rms": [round(float(v), 5) for v in np.sqrt(sq.reshape(-1, 3).mean(0))],
          "clipped_pixels": round(float(clipped.mean()), 4),
          "clipped_share": round(float(sq[clipped].sum() / max(sq.sum(), 1e-30)), 4),
          "gain_fit": [round(float(g), 4) for g in gain],
          "gain_fit_psnr": round(float(psnr(flat_e * gain, flat_t)), 3),
          "exact_tone_psnr": round(float(psnr(exact, raw)), 3),
          "render_gain": round(white / render_white, 4),
          "libraw_default_gain": round(white / default_white, 4)}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("files", nargs="+")
  ap.add_argument("--protocol", default="invisp")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  from jisp.core.errors import UserError
  for f in args.files:
    try:
      r = analyse(f, args.protocol)
    except (OSError, UserError) as e:
      print(f"upi_error: error: {f}: {e}" if str(f) not in str(e) else f"upi_error: error: {e}",
            file=sys.stderr)
      return 2
    if args.json:
      print(json.dumps(r))
    else:
      print(f"{r['camera']}: UPI {r['upi_psnr']:.2f} dB; best per-channel gains "
            f"{r['gain_fit']} -> {r['gain_fit_psnr']:.2f} dB; with the render's own tone "
            f"{r['exact_tone_psnr']:.2f} dB; clipped pixels "
            f"{r['clipped_pixels']:.1%} carry {r['clipped_share']:.1%} of the squared error; "
            f"the render brightened x{r['render_gain']:.3f} beyond the metadata "
            f"(x{r['libraw_default_gain']:.3f} at LibRaw's default adjust_maximum)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
