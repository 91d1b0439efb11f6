"""`jisp eval --workdir D --data DIR [--json]`: full-image scores of a run; report.png."""
from __future__ import annotations

import json

from jisp.cli import common


def add_parser(sub, name):
  e = sub.add_parser(name, help="RAW PSNR / SSIM of a run on held-out images; report.png")
  common.add_run_args(e)
  e.add_argument("--out", default=None,
                 help="where results.json and report.png go (default: WORKDIR/eval, or "
                      "eval_METHOD for --method)")
  e.add_argument("--data", required=True,
                 help="prepared folder (manifest.json: its test split) or a folder of RAWs")
  e.add_argument("--json", action="store_true", help="print one JSON object")
  e.add_argument("--max-images", type=int, default=None, help="evaluate the first N only")
  e.add_argument("--tiling-report", action="store_true",
                 help="compare grid / overlap / overlap + shared noise on the same images")
  e.add_argument("--samples", type=int, default=1, metavar="N",
                 help="score the mean of N samples per image (sampling runs; N times the "
                      "network calls; sample 0 is the --samples 1 prediction)")
  common.add_predict_args(e)
  common.add_tiling_args(e)
  e.set_defaults(func=run)
  return e


def run(args, rest) -> int:
  common.split_overrides(rest)
  from pathlib import Path
  from jisp.infer import evaluate
  common.start_processes(args)
  main = common.is_main_process()
  log = None if args.json or not main else (lambda m: print(m, flush=True))
  run_ = common.load_run(args)
  out = Path(args.out) if args.out else (Path(run_.workdir) / "eval" if run_.workdir
                                         else Path(f"eval_{args.method}"))
  out = Path(common.process_out(out))
  from jisp.infer import reconstruct
  if args.samples != 1 and (run_.task.io.direction == "both" or
                            reconstruct.data_protocol(run_.config) == "aim"):
    from jisp.core.errors import OptionError
    raise OptionError(f"--samples {args.samples}: only the sRGB -> RAW / RAW -> sRGB eval of "
                      "a sampling run averages samples (this run is scored by its "
                      "own protocol)")
  if reconstruct.data_protocol(run_.config) == "aim":
    return _evaluate_aim(args, run_, out, main, log)
  files, protocol, desc = evaluate.eval_files(args.data, run_.config)
  if args.max_images is not None:
    files = files[:max(0, args.max_images)]
  if run_.task.io.direction == "both":  # it renders: its own real-JPEG protocol
    results, rows = evaluate.evaluate_roundtrip(run_, files, protocol, log=log)
  else:
    predictor = common.make_predictor(run_, args)
    settings = evaluate.tilings(predictor.patch, args.overlap, args.grid, args.shared_noise,
                                args.tiling_report)
    if log:
      what = f"run {run_.workdir} step {run_.step}" if run_.workdir else f"method {args.method}"
      log(f"jisp eval: {what}, {predictor.describe()}, {desc}")
    results, rows = evaluate.evaluate(run_, predictor, files, protocol, settings,
                                      seed=args.seed, samples=args.samples,
                                      progress=main and not (args.no_progress or args.json),
                                      log=log)
  paths = evaluate.write_results(out, results, rows, args.data)
  if not main:
    return 0
  if args.json:
    print(json.dumps(results), flush=True)
  else:
    for line in evaluate.summary_lines(results):
      print(line)
    print(f"results: {paths['results']}\nreport: {paths['report']}", flush=True)
  return 0


def _evaluate_aim(args, run_, out, main, log) -> int:
  """An AIM 2022 (packed RAW) run: scored on the AIM folder / RAW files with the
  organisers' PSNR and SSIM by the comparison code (jisp.infer.compare), one method;
  results.json is that comparison's record."""
  from pathlib import Path
  from jisp.core.fileio import atomic_write_json
  from jisp.infer import compare
  name = Path(run_.workdir).name if run_.workdir else args.method
  method = compare.Method(name, str(run_.workdir or f"baseline:{args.method}"), run_)
  results, _ = compare.compare(
      [method], args.data, protocol="aim", options=common.predict_options(args),
      overlap=args.overlap, grid=args.grid, shared_noise=args.shared_noise,
      max_images=args.max_images, max_batch=args.max_batch, devices=args.devices,
      net_chunk=args.net_chunk, seed=args.seed,
      progress=main and not (args.no_progress or args.json), log=log)
  row = results["methods"][0]
  if row["status"] != "ok":
    from jisp.core.errors import RunError
    raise RunError(f"{run_.workdir}: {row.get('error') or row['status']}")
  out.mkdir(parents=True, exist_ok=True)
  atomic_write_json(out / "results.json", results)
  if not main:
    return 0
  if args.json:
    print(json.dumps(results), flush=True)
  else:
    print(compare.markdown_table(results).split("\n\n")[0])
    print(f"results: {out / 'results.json'}", flush=True)
  return 0
