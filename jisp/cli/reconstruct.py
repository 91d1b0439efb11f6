"""`jisp reconstruct --workdir D INPUT... -o OUT`: sRGB photos -> DNG (RAW -> sRGB runs: RAW
files -> PNG)."""
from __future__ import annotations

import sys

from jisp.cli import common


def add_parser(sub, name):
  r = sub.add_parser(name, help="sRGB images -> DNG (+ preview PNG, 16-bit TIFF)")
  r.add_argument("inputs", nargs="+", metavar="INPUT",
                 help="JPEG / PNG / TIFF images (camera RAW files for RAW -> sRGB runs)")
  r.add_argument("-o", "--out", required=True, help="output folder")
  common.add_run_args(r)
  r.add_argument("--like", default=None, metavar="REFERENCE_RAW",
                 help="take Bayer layout, levels, white balance and colour matrix from this RAW")
  common.add_predict_args(r)
  common.add_tiling_args(r)
  r.set_defaults(func=run)
  return r


def run(args, rest) -> int:
  """0 all written, 1 some inputs failed, 2 bad run/options (raised)."""
  common.split_overrides(rest)
  from jisp.core.fileio import ensure_output_dir
  from jisp.infer import reconstruct
  run_ = common.load_run(args)
  protocol = reconstruct.data_protocol(run_.config)
  predictor = common.make_predictor(run_, args)
  tile = reconstruct.make_tiling(predictor.patch, args.overlap, args.grid, args.shared_noise)
  profile, desc = (reconstruct.camera_profile(run_.config, args.like,
                                               run_.task.default_camera())
                   if predictor.io.target == "raw" else (None, "sRGB output"))
  ensure_output_dir(args.out)  # before hours of sampling, not after
  what = f"run {run_.workdir} step {run_.step}" if run_.workdir else f"method {args.method}"
  print(f"jisp reconstruct: {what}, {predictor.describe()}, {tile.name}, camera: {desc}",
        flush=True)
  failed = reconstruct.reconstruct_files(
      run_, predictor, args.inputs, args.out, tile, profile=profile, protocol=protocol,
      seed=args.seed, progress=not args.no_progress,
      log=lambda m: print(m, flush=True),
      warn=lambda m: print(f"jisp reconstruct: error: {m}", file=sys.stderr,
                           flush=True))
  return 1 if failed else 0
