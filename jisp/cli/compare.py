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
  if not args.runs and not args.baseline:
    raise OptionError("give at least one RUN folder or --baseline NAME")
  for b in args.baseline:
    if b not in BASELINES:
      raise OptionError(f"--baseline {b!r}: unknown (methods without training: "
                        f"{', '.join(BASELINES)})")
  ensure_output_dir(args.out)
  log = None if args.json else (lambda m: print(m, flush=True))
  methods = compare.load_methods(args.runs)
  protocol = compare.comparison_protocol(methods, args.protocol, args.data)
  methods += compare.load_methods((), args.baseline, protocol)  # in the compared space
  results, figure = compare.compare(
      methods, args.data, protocol=protocol, options=common.predict_options(args),
      overlap=args.overlap, grid=args.grid, shared_noise=args.shared_noise,
      max_images=args.max_images, max_batch=args.max_batch, devices=args.devices,
      net_chunk=args.net_chunk, seed=args.seed,
      progress=not (args.no_progress or args.json), log=log, crop=args.crop)
  paths = compare.write_outputs(args.out, results, figure)
  if args.json:
    print(json.dumps(results), flush=True)
  else:
    print(compare.markdown_table(results).split("\n\n")[0])
    print(f"table: {paths['md']}\nnumbers: {paths['json']}\nfigure: {paths['png']}",
          flush=True)
  return 1 if any(r["status"] != "ok" for r in results["methods"]) else 0
