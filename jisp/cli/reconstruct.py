"""`jisp reconstruct --workdir D INPUT... -o OUT`: sRGB photos -> DNG (RAW -> sRGB runs: RAW
files -> PNG). `--method upi` needs no trained run; `--check` renders each DNG back and
prints how closely it reproduces the photo; an interrupted run resumes where it stopped."""
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
  r.add_argument("--check", action="store_true",
                 help="render each DNG with LibRaw (the protocol's settings) and print its "
                      "PSNR and mean CIEDE2000 against the input photo")
  r.add_argument("--no-resume", action="store_true",
                 help="do not keep sampled tiles for resuming (OUT/.STEM.tiles/)")
  common.add_predict_args(r)
  common.add_tiling_args(r)
  r.set_defaults(func=run)
  return r


def run(args, rest) -> int:
  """0 all written, 1 some inputs failed, 2 bad run/options (raised)."""
  common.split_overrides(rest)
  from jisp.core.errors import OptionError
  from jisp.core.fileio import ensure_output_dir
  from jisp.infer import reconstruct
  several = common.start_processes(args)
  main = common.is_main_process()
  run_ = common.load_run(args)
  protocol = reconstruct.data_protocol(run_.config)
  predictor = common.make_predictor(run_, args)
  tile = reconstruct.make_tiling(predictor.patch, args.overlap, args.grid, args.shared_noise)
  raw_out = predictor.io.target == "raw"
  if args.check:  # before hours of sampling, not after
    if not raw_out:
      raise OptionError("--check renders DNGs: it applies to sRGB -> RAW runs")
    from jisp.infer import look
    look.check_available()
  profile, desc = (reconstruct.camera_profile(run_.config, args.like,
                                               run_.task.default_camera())
                   if raw_out else (None, "sRGB output"))
  ensure_output_dir(args.out)
  out = common.process_out(args.out)
  say = (lambda m: print(m, flush=True)) if main else (lambda m: None)
  say(f"jisp reconstruct: {reconstruct.run_description(run_, predictor)}, {tile.name}, "
      f"camera: {desc}" + (" (no resume across several processes)"
                           if several and not args.no_resume else ""))
  # Resume is off across processes: each must run the same chunks, and only process 0
  # keeps tiles.
  failed = reconstruct.reconstruct_files(
      run_, predictor, args.inputs, out, tile, profile=profile, protocol=protocol,
      seed=args.seed, progress=main and not args.no_progress, check=args.check,
      resume=not (args.no_resume or several), log=say,
      warn=lambda m: print(f"jisp reconstruct: error: {m}", file=sys.stderr,
                           flush=True) if main else None)
  return 1 if failed else 0
