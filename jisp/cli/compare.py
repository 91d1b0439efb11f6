"""`jisp compare RUN... [--baseline upi] --data DIR [--json] [-o OUT]`: every method on one
table (OUT/compare.md, compare.json, compare.png)."""
from __future__ import annotations

import json

from jisp.cli import common


def add_parser(sub, name):
  c = sub.add_parser(name, help="evaluate runs and baselines on the same test images: "
                                "compare.md / .json / .png")
  c.add_argument("runs", nargs="*", metavar="RUN", help="training run folders (workdirs)")
  c.add_argument("--baseline", action="append", default=[], metavar="NAME",
                 help="add a method without training (upi: each test file's own camera "
                      "metadata); repeatable")
  c.add_argument("--data", required=True,
                 help="prepared folder (its test split), a folder of RAW files, or (protocol "
                      "aim) an AIM 2022 folder")
  c.add_argument("-o", "--out", default="compare_out", help="output folder")
  c.add_argument("--protocol", default=None, choices=("invisp", "linear", "aim"),
                 help="the RAW space compared in (default: the prepared folder's, else the "
                      "first run's); runs of another protocol are refused in their rows")
  c.add_argument("--max-images", type=int, default=None, help="the first N test images only")
  c.add_argument("--crop", type=int, default=192,
                 help="side of the figure's centred crop, input pixels")
  c.add_argument("--json", action="store_true", help="print compare.json's object")
  c.add_argument("--leave-one-camera-out", action="store_true",
                 help="--data is a folder of RAW files of several cameras: for each camera, "
                      "train every method (--loco-methods) on the others for --cpu-seconds "
                      "and test it, UPI and UPI with the render's curve on that camera "
                      "(OUT/loco.md, loco.json)")
  c.add_argument("--loco-methods", default=None,
                 help="comma-separated subset of regression,ssdnet,ddpm,dtdm (default all)")
  c.add_argument("--loco-prior-tone", default="render", choices=("render", "upi"),
                 help="leave-one-camera-out: how the methods' camera prior undoes the "
                      "render's tone (the protocol's own curve, or Brooks et al.'s model)")
  c.add_argument("--cpu-seconds", type=float, default=300.0,
                 help="leave-one-camera-out: CPU seconds of training per method and camera")
  common.add_predict_args(c)
  common.add_tiling_args(c)
  c.set_defaults(func=run)
  return c


def run(args, rest) -> int:
  """0 every method evaluated, 1 some failed (their rows say why), 2 bad options."""
  common.split_overrides(rest)
  from jisp.core.errors import OptionError
  from jisp.core.fileio import ensure_output_dir
  from jisp.infer import compare
  from jisp.train.runs import BASELINES
  if args.leave_one_camera_out:
    return _leave_one_camera_out(args)
  common.start_processes(args)
  main = common.is_main_process()
  if not args.runs and not args.baseline:
    raise OptionError("give at least one RUN folder or --baseline NAME")
  for b in args.baseline:
    if b not in BASELINES:
      raise OptionError(f"--baseline {b!r}: unknown (methods without training: "
                        f"{', '.join(BASELINES)})")
  ensure_output_dir(args.out)
  log = None if args.json or not main else (lambda m: print(m, flush=True))
  methods = compare.load_methods(args.runs)
  protocol = compare.comparison_protocol(methods, args.protocol, args.data)
  methods += compare.load_methods((), args.baseline, protocol)  # in the compared space
  results, figure = compare.compare(
      methods, args.data, protocol=protocol, options=common.predict_options(args),
      overlap=args.overlap, grid=args.grid, shared_noise=args.shared_noise,
      max_images=args.max_images, max_batch=args.max_batch, devices=args.devices,
      net_chunk=args.net_chunk, seed=args.seed,
      progress=main and not (args.no_progress or args.json), log=log, crop=args.crop)
  paths = compare.write_outputs(common.process_out(args.out), results, figure)
  if not main:
    return 0
  if args.json:
    print(json.dumps(results), flush=True)
  else:
    print(compare.markdown_table(results).split("\n\n")[0])
    print(f"table: {paths['md']}\nnumbers: {paths['json']}\nfigure: {paths['png']}",
          flush=True)
  return 1 if any(r["status"] != "ok" for r in results["methods"]) else 0


def _leave_one_camera_out(args) -> int:
  """Trains as well as evaluates (jisp.experiments.loco): its runs go under OUT/CAMERA/."""
  from jisp.core.errors import OptionError
  from jisp.experiments import loco
  if args.runs or args.baseline:
    raise OptionError("--leave-one-camera-out trains its own runs: drop the RUN folders and "
                      "--baseline (UPI and upi_render are always in its table)")
  methods = args.loco_methods.split(",") if args.loco_methods else None
  for m in methods or ():
    if m not in loco.KNOWN:
      raise OptionError(f"--loco-methods {m!r}: expected a subset of {','.join(loco.KNOWN)}")
  results = loco.run(args.data, args.out, args.cpu_seconds, methods=methods,
                     prior_tone=args.loco_prior_tone,
                     log=(lambda m: None) if args.json else (lambda m: print(m, flush=True)))
  print(json.dumps(results) if args.json else loco.markdown(results), flush=True)
  return 0
