"""`jisp eval`: full-image RAW PSNR of a trained run in the DESIGN.md protocol, plus a report.

--data DIR is either a prepared folder (manifest.json from `jisp prepare`: its test-split
files, re-read from the manifest's raw_dir in the manifest's protocol) or a plain folder of
RAW files (all evaluated, in the run's protocol). Each RAW is read, rendered by LibRaw and
paired exactly as in training (`pairs.make_pair`: the sRGB input is the real JPEG q90 of the
render), the sRGB is reconstructed with tiling, and scored:
  raw_psnr       mean PSNR over 3x3 tiles of the image (InvISP's protocol), [0, 1] range
  raw_psnr_full  one PSNR over the whole image;  raw_ssim  mean SSIM over the image
  seam_ratio     jump of the error across tile edges / elsewhere (1 = seamless)
  seconds        reconstruction wall time (compile excluded, reported apart)
The DDPM task has no forward (RAW -> sRGB) model, so no RGB metrics are reported for it.

Writes WORKDIR/eval/results.json and WORKDIR/eval/report.png (per image: input sRGB,
reconstructed RAW, true RAW, error map), both atomically. --tiling-report scores three
tilings on the same images -- regular grid (the paper), overlap, overlap + shared noise --
to show whether the fast samplers' blocky artefacts (the paper's Fig. 5) go away.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jisp.infer import images, metrics, predict, reconstruct, tiling
from jisp.infer.args import add_eval_args  # noqa: F401 (CLI)

ERROR_SCALE = 0.1  # |error| of 0.1 (10% of the range) is full brightness in the error map


class EvalError(ValueError):
  pass


def eval_files(data_dir, config) -> tuple[list[Path], str, str]:
  """(RAW paths, protocol, description) for --data DIR."""
  d = Path(data_dir)
  if not d.is_dir():
    raise EvalError(f"{d}: no such folder")
  mpath = d / "manifest.json"
  if mpath.is_file():
    try:
      man = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
      raise EvalError(f"{mpath}: not valid JSON ({e})") from None
    raw_dir = Path(man.get("raw_dir", d))
    files = [raw_dir / f["path"] for f in man.get("files", [])
             if f.get("status") == "ok" and f.get("split") == "test"]
    if not files:
      raise EvalError(f"{mpath}: no test-split files to evaluate")
    return files, man.get("protocol", "invisp"), f"test split of {mpath} ({len(files)} files)"
  from jisp.data.prepare import list_raw_files
  files = list_raw_files(d)
  if not files:
    raise EvalError(f"{d}: no manifest.json and no RAW files")
  return files, reconstruct.data_protocol(config), f"RAW folder {d} ({len(files)} files)"


def raw_to_rgb(task) -> bool:
  """True for tasks that predict sRGB from RAW (DTDM raw2rgb, regression raw2rgb)."""
  return getattr(task, "cond_key", "rgb") == "raw"


def target_name(task) -> str:
  return "sRGB" if raw_to_rgb(task) else "RAW"


def load_pair(path, protocol: str) -> tuple[np.ndarray, np.ndarray]:
  """(sRGB input, true RAW) of one RAW file, both float32 (H, W, 3), as in training."""
  from jisp.data import pairs, raw_io
  if protocol not in reconstruct.PROTOCOL_GAMMA:
    raise EvalError(f"protocol {protocol!r} is not evaluated full-image (3-channel RAW only)")
  cap = raw_io.read_capture(path)
  pair = pairs.make_pair(cap, raw_io.render_srgb(cap), protocol)
  return np.asarray(pair["rgb"], np.float32), np.asarray(pair["raw"], np.float32)


def tiling_settings(args, patch: int) -> list[dict]:
  ov = reconstruct.overlap_of(args, patch) if not args.grid else 0
  user = {"name": "grid" if args.grid else f"overlap{ov}" + ("+shared" if args.shared_noise
                                                             else ""),
          "grid": bool(args.grid), "overlap": ov, "shared_noise": bool(args.shared_noise)}
  if not getattr(args, "tiling_report", False):
    return [user]
  ov = ov or patch // 4
  return [{"name": "grid", "grid": True, "overlap": 0, "shared_noise": False},
          {"name": f"overlap{ov}", "grid": False, "overlap": ov, "shared_noise": False},
          {"name": f"overlap{ov}+shared", "grid": False, "overlap": ov, "shared_noise": True}]


def score(pred, true, layout) -> dict:
  out = {"raw_psnr": metrics.tiled_psnr(pred, true, 3),
         "raw_psnr_full": float(metrics.psnr(pred, true)),
         "raw_ssim": float(metrics.ssim(pred, true)) if min(pred.shape[:2]) > 10 else None,
         "seam_ratio": tiling.seam_ratio(pred, layout, true)}
  for name, fn in metrics.EXTRA_METRICS.items():  # e.g. LPIPS, where the weights exist
    out[name] = float(fn(np.asarray(pred), np.asarray(true)))
  return out


def evaluate(run, predictor, files, protocol, settings, *, seed=0, progress=False,
             log=None) -> tuple[dict, list]:
  """Scores every file under every tiling setting. Returns (results, report rows)."""
  key = jax.random.PRNGKey(seed)
  per_image, rows, skipped = [], [], []
  for i, path in enumerate(files):
    try:
      rgb, true = load_pair(path, protocol)
    except (OSError, ValueError) as e:  # RawFormatError is a ValueError
      skipped.append(" ".join(str(e).split()))
      if log:
        log(f"skipped: {skipped[-1]}")
      continue
    if raw_to_rgb(run.task):  # DiffRAW direction: RAW in, the camera's sRGB is the truth
      rgb, true = true, rgb
    entry = {"file": str(path), "size": [int(rgb.shape[0]), int(rgb.shape[1])], "results": {}}
    for j, s in enumerate(settings):
      layout = reconstruct.layout_for(predictor, rgb.shape, overlap=s["overlap"],
                                      grid=s["grid"])
      predictor.warm(len(layout))
      t0 = time.perf_counter()
      pred = reconstruct.predict_image(predictor, rgb, overlap=s["overlap"], grid=s["grid"],
                                       shared_noise=s["shared_noise"],
                                       key=jax.random.fold_in(key, i), progress=progress,
                                       desc=Path(path).name)
      secs = time.perf_counter() - t0
      r = score(pred, true, layout)
      r.update(seconds=secs, patches=len(layout))
      entry["results"][s["name"]] = r
      if j == 0:
        rows.append((Path(path).name, rgb, pred, true, r["raw_psnr"]))
      if log:
        log(f"{Path(path).name} [{s['name']}]: {target_name(run.task)} PSNR {r['raw_psnr']:.2f} dB "
            f"(3x3 tiles), {secs:.2f} s")
    per_image.append(entry)
  if not per_image:
    raise EvalError("no image could be evaluated: " + "; ".join(skipped[:3]))

  summary = []
  for s in settings:
    rs = [e["results"][s["name"]] for e in per_image]
    mean = lambda k: float(np.mean([r[k] for r in rs if r[k] is not None])) if any(
        r[k] is not None for r in rs) else None
    summary.append(dict(s, mean_raw_psnr=mean("raw_psnr"), mean_raw_psnr_full=mean(
        "raw_psnr_full"), mean_raw_ssim=mean("raw_ssim"), mean_seam_ratio=mean("seam_ratio"),
        seconds_per_image=mean("seconds")))
  results = {
      "workdir": run.workdir, "step": run.step, "task": run.task.name,
      "target": "rgb" if raw_to_rgb(run.task) else "raw",  # what *_raw_psnr measures
      "sampler": predictor.sampler, "steps": predictor.steps, "nfe": predictor.nfe,
      "sampler_options": dict(predictor.sampler_kw),
      "protocol": protocol, "devices": predictor.n_dev, "max_batch": predictor.max_batch,
      "n_images": len(per_image), "skipped": skipped,
      "mean_raw_psnr": summary[0]["mean_raw_psnr"],
      "seconds_per_image": summary[0]["seconds_per_image"],
      "compile_seconds": {str(k): v for k, v in predictor.compile_seconds.items()},
      "rgb_metrics": None,  # no forward model in this task
      "settings": summary, "images": per_image,
  }
  return results, rows


def evaluate_flow(run, files, protocol, log=None) -> tuple[dict, list]:
  """InvISP's test protocol: render each test RAW with the forward pass, store the
  rendering as a real JPEG q90 (PIL), re-read it and invert; RAW PSNR over 3x3 tiles in the
  protocol space, RGB PSNR/SSIM of the rendering, and the JPEG's size against the RAW
  (paper Eq. 11-12)."""
  from jisp.infer import compression, flow_benchmark
  from jisp.data import raw_io
  pair_list, skipped, rows = [], [], []
  for path in files:
    try:
      rgb, true = load_pair(path, protocol)
      bits = int(raw_io.read_capture(path).bits)
    except (OSError, ValueError) as e:
      skipped.append(" ".join(str(e).split()))
      continue
    pair_list.append({"name": Path(path).name, "raw": true, "rgb": rgb, "bits": bits})
  if not pair_list:
    raise EvalError("no image could be evaluated: " + "; ".join(skipped[:3]))
  t0 = time.perf_counter()
  res = flow_benchmark.evaluate_pairs(run.task, run.params, pair_list)
  secs = (time.perf_counter() - t0) / len(pair_list)
  fwd = jax.jit(lambda p, x: run.task.forward(p, x[None])[0])
  inv = jax.jit(lambda p, y: run.task.predict(p, y[None])[0])
  for pr in pair_list:
    rendered = compression.to_uint8(np.asarray(fwd(run.params, pr["raw"])))
    decoded = compression.decode_jpeg(compression.encode_jpeg(rendered, 90, "4:2:0"))
    pred = np.asarray(inv(run.params, decoded))
    psnr_img = res["files"][pr["name"]]["raw_psnr"]
    rows.append((pr["name"], decoded / 255.0, pred, pr["raw"], psnr_img))
    if log:
      log(f"{pr['name']}: RAW PSNR {psnr_img:.2f} dB (3x3 tiles, from JPEG q90 of the rendering)")
  results = {
      "workdir": run.workdir, "step": run.step, "task": run.task.name, "protocol": protocol,
      "n_images": len(pair_list), "skipped": skipped,
      "mean_raw_psnr": res["raw_psnr"], "seconds_per_image": secs,
      "rgb_metrics": {"rgb_psnr": res["rgb_psnr"], "rgb_ssim": res["rgb_ssim"]},
      "compression_ratio": res["compression_ratio"], "bpp": res["bpp"],
      "jpeg_quality": res["jpeg_quality"], "files": res["files"],
  }
  return results, rows


# --------------------------------------------------------------------------- report image

def _thumb(img, width):
  from PIL import Image
  a = images.to_uint8(img)
  h, w = a.shape[:2]
  height = max(1, round(h * width / w))
  return np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))


def error_map(pred, true) -> np.ndarray:
  """|pred - true| averaged over channels, ERROR_SCALE -> white, as a black-red-yellow-white
  heat map (H, W, 3) in [0, 1]."""
  e = np.clip(np.abs(np.asarray(pred) - np.asarray(true)).mean(-1) / ERROR_SCALE, 0, 1)
  return np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)],
                  -1)


def report_image(rows, width: int = 256, max_rows: int = 8) -> np.ndarray:
  """One row per image: input sRGB | reconstructed RAW | true RAW | error map, labelled."""
  from PIL import Image, ImageDraw
  head, label_h, gap = 18, 16, 4
  rows = rows[:max_rows]
  thumbs = [[_thumb(x, width) for x in (rgb, pred, true, error_map(pred, true))]
            for _, rgb, pred, true, _ in rows]
  heights = [t[0].shape[0] for t in thumbs]
  H = head + sum(h + label_h + gap for h in heights)
  W = 4 * width + 3 * gap
  canvas = Image.new("RGB", (W, H), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  titles = ("input sRGB", "reconstructed RAW", "true RAW", f"|error| (white = {ERROR_SCALE})")
  for c, t in enumerate(titles):
    draw.text((c * (width + gap) + 4, 3), t, fill=(0, 0, 0))
  y = head
  for (name, *_, p), ts, h in zip(rows, thumbs, heights):
    draw.text((4, y + 2), f"{name}  RAW PSNR {p:.2f} dB", fill=(0, 0, 0))
    y += label_h
    for c, t in enumerate(ts):
      canvas.paste(Image.fromarray(t), (c * (width + gap), y))
    y += h + gap
  return np.asarray(canvas)


def _write_json_atomic(path, obj):
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=1)
      f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def tiling_table(settings) -> str:
  lines = ["| tiling | RAW PSNR (3x3 tiles) | whole-image PSNR | seam ratio | s/image |",
           "| --- | --- | --- | --- | --- |"]
  for s in settings:
    lines.append(f"| {s['name']} | {s['mean_raw_psnr']:.2f} | {s['mean_raw_psnr_full']:.2f} "
                 f"| {s['mean_seam_ratio']:.2f} | {s['seconds_per_image']:.2f} |")
  return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def run_eval(args) -> int:
  """CLI body; returns the exit status (0 ok, 2 bad run / data)."""
  log = None if args.json else (lambda m: print(m, flush=True))
  try:
    run = predict.load_run(args.workdir)
    files, protocol, desc = eval_files(args.data, run.config)
    if args.max_images is not None:
      files = files[:max(0, args.max_images)]
    if hasattr(run.task, "forward"):  # an invertible ISP: its own real-JPEG protocol
      results, rows = evaluate_flow(run, files, protocol, log=log)
      return _write_results(args, run, results, rows)
    predictor = reconstruct.make_predictor(run, args)
    settings = tiling_settings(args, predictor.patch)
    if log:
      log(f"jisp eval: run {run.workdir} step {run.step}, {predictor.describe()}, {desc}")
    results, rows = evaluate(run, predictor, files, protocol, settings, seed=args.seed,
                             progress=not (args.no_progress or args.json), log=log)
  except (predict.RunError, EvalError, reconstruct.ReconstructError, ValueError) as e:
    reconstruct._err("eval", e)
    return 2
  return _write_results(args, run, results, rows)


def _write_results(args, run, results, rows) -> int:
  out = Path(run.workdir) / "eval"
  out.mkdir(parents=True, exist_ok=True)
  results["data"] = str(args.data)
  results["report"] = str(out / "report.png")
  images.write_png(out / "report.png", report_image(rows))
  _write_json_atomic(out / "results.json", results)
  if args.json:
    print(json.dumps(results), flush=True)
  elif results["task"] == "flow_isp":
    print(f"RAW PSNR {results['mean_raw_psnr']:.2f} dB from a real JPEG q{results['jpeg_quality']} "
          f"of the rendering; rendering RGB PSNR {results['rgb_metrics']['rgb_psnr']:.2f} dB, "
          f"SSIM {results['rgb_metrics']['rgb_ssim']:.4f}; JPEG {results['bpp']:.2f} bpp, "
          f"compression ratio {results['compression_ratio']:.1f}; {results['n_images']} images")
    print(f"results: {out / 'results.json'}\nreport: {out / 'report.png'}", flush=True)
  else:
    s = results["settings"][0]
    print(f"{target_name(run.task)} PSNR {s['mean_raw_psnr']:.2f} dB (3x3 tiles, mean of {results['n_images']} "
          f"images), {s['seconds_per_image']:.2f} s/image")
    if len(results["settings"]) > 1:
      print(tiling_table(results["settings"]))
    print(f"results: {out / 'results.json'}\nreport: {out / 'report.png'}", flush=True)
  return 0
