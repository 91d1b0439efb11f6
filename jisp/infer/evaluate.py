"""Full-image evaluation of a trained run in the DESIGN.md protocol, for every task.

The data is a prepared folder (manifest.json from `jisp prepare`: its test-split files,
re-read from the manifest's raw_dir) or a plain folder of RAW files, always in the run's
protocol (a folder prepared under another protocol is refused). Each RAW is read, rendered by
LibRaw and paired exactly as in training (jisp.data.pairs: the sRGB input is a real JPEG of
the render); the task maps its io.source image to its io.target image with tiling, scored:
  raw_psnr       mean PSNR over 3x3 tiles of the image (InvISP's protocol), [0, 1] range
                 (of the target: RAW for sRGB -> RAW tasks, sRGB for RAW -> sRGB tasks)
  raw_psnr_full  one PSNR over the whole image;  raw_ssim  mean SSIM over the image
  seam_ratio     jump of the error across tile edges / elsewhere (1 = seamless)
  seconds        reconstruction wall time (compile excluded, reported apart)
  look_psnr, look_de2000  the look round trip (jisp.infer.look; sRGB -> RAW tasks): the
                 predicted RAW written as a DNG of the test file's camera (its sensor order
                 and orientation) and rendered as the protocol renders, against the input
                 sRGB; PSNR and mean CIEDE2000. Next to it, per image, `look_true_raw`:
                 the same for the true RAW (what a perfect prediction scores: the JPEG's loss)
Tasks that render (io.direction "both", the flow ISP) are scored by their own real-JPEG
round trip (jisp.infer.roundtrip) instead.

`extra_metrics` (name -> fn(pred, true) -> float on (H, W, 3) numpy in [0, 1]) adds
per-image metrics, e.g. LPIPS for a user who has its weights.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jisp.core import images, metrics
from jisp.core.camera import PROTOCOL_GAMMA, camera_features
from jisp.core.errors import DataError, InputError, OptionError
from jisp.core.fileio import atomic_write_json, load_manifest
from jisp.infer import reconstruct, report, roundtrip, tiling


def eval_files(data_dir, config) -> tuple[list[Path], str, str]:
  """(RAW paths, protocol, description) for --data DIR, in the run's protocol."""
  d = Path(data_dir)
  if not d.is_dir():
    raise DataError(f"{d}: no such folder")
  run_protocol = reconstruct.data_protocol(config)
  if (d / "manifest.json").is_file():
    # Only the file list and the protocol's name are used: the RAW files are re-read and
    # paired by this jisp, whatever version prepared the folder.
    man = load_manifest(d)
    protocol = man.get("protocol", "invisp")
    if protocol != run_protocol:
      raise DataError(f"{d}: prepared with protocol {protocol!r}, but the run predicts in "
                      f"protocol {run_protocol!r}; evaluate on data of the run's protocol "
                      "(or a plain folder of RAW files)")
    raw_dir = Path(man.get("raw_dir", d))
    files = [raw_dir / f["path"] for f in man.get("files", [])
             if f.get("status") == "ok" and f.get("split") == "test"]
    if not files:
      raise DataError(f"{d / 'manifest.json'}: no test-split files to evaluate")
    return files, protocol, f"test split of {d / 'manifest.json'} ({len(files)} files)"
  from jisp.data.prepare import list_raw_files
  files = list_raw_files(d)
  if not files:
    raise DataError(f"{d}: no manifest.json and no RAW files")
  return files, run_protocol, f"RAW folder {d} ({len(files)} files)"


def load_pair(path, protocol: str) -> dict:
  """{'rgb', 'raw'} float32 (H, W, 3) of one RAW file, as in training, plus 'bits' and
  'camera' (the file's own camera features: the test camera, for tasks that take it)."""
  from jisp.data import pairs, raw_io
  if protocol not in PROTOCOL_GAMMA:
    raise DataError(f"protocol {protocol!r} is not evaluated full-image (3-channel RAW only)")
  cap = raw_io.read_capture(path)
  pair = pairs.make_pair(cap, raw_io.render_srgb(cap), protocol)
  return {"rgb": np.asarray(pair["rgb"], np.float32),
          "raw": np.asarray(pair["raw"], np.float32), "bits": int(cap.bits),
          "camera": camera_features(cap.profile()), "look": look_setup(cap)}


def look_setup(cap) -> dict:
  """What the look round trip needs of a test file: its DNG profile, orientation and the
  white-balance multipliers its render used."""
  from jisp.infer import look
  return {"profile": reconstruct.with_color_matrix(cap.profile()),
          "orientation": int(cap.orientation), "wb": look.source_wb(cap)}


def look_score(raw, rgb, protocol: str, setup: dict) -> dict:
  """{'look_psnr', 'look_de2000'} of a protocol-space RAW (upright) against the sRGB."""
  from jisp.core import dng
  from jisp.infer import look
  codes = reconstruct.raw_to_codes(raw, protocol, setup["profile"], setup["orientation"])
  m = look.look_metrics(look.render_mosaic(codes, setup["profile"],
                                           orientation=setup["orientation"], wb=setup["wb"]),
                        dng.even_crop(rgb))
  return {"look_psnr": m["psnr"], "look_de2000": m["de2000"]}


def tilings(patch: int, overlap=None, grid=False, shared_noise=False, report_all=False
            ) -> list[reconstruct.Tiling]:
  """The user's tiling, or (report_all) grid / overlap / overlap + shared noise."""
  user = reconstruct.make_tiling(patch, overlap, grid, shared_noise)
  if not report_all:
    return [user]
  ov = user.overlap or patch // 4
  return [reconstruct.Tiling(0, True), reconstruct.Tiling(ov), reconstruct.Tiling(ov, False, True)]


def score(pred, true, layout, extra_metrics=None) -> dict:
  out = {"raw_psnr": metrics.tiled_psnr(pred, true, 3),
         "raw_psnr_full": float(metrics.psnr(pred, true)),
         "raw_ssim": float(metrics.ssim(pred, true)) if min(pred.shape[:2]) > 10 else None,
         "seam_ratio": tiling.seam_ratio(pred, layout, true)}
  for name, fn in (extra_metrics or {}).items():
    out[name] = float(fn(np.asarray(pred), np.asarray(true)))
  return out


def load_each(items, load, *, log=None, what: str = "image could be evaluated",
              errors=(OSError, InputError, ValueError)) -> tuple[list, list[str]]:
  """[load(item)] of the items that load, and one line per item skipped for `errors`;
  DataError when none loads."""
  loaded, skipped = [], []
  for it in items:
    try:
      loaded.append(load(it))
    except errors as e:
      skipped.append(" ".join(str(e).split()))
      if log:
        log(f"skipped: {skipped[-1]}")
  if not loaded:
    raise DataError(f"no {what}: " + "; ".join(skipped[:3]))
  return loaded, skipped


def _load_all(files, protocol, log):
  return load_each(files, lambda path: (Path(path), load_pair(path, protocol)), log=log)


def sample_key(key, image: int, sample: int):
  """The key of sample `sample` of image `image`. Sample 0 is the key a single-sample eval
  uses, so averaging N samples starts from the prediction --samples 1 scores."""
  base = jax.random.fold_in(key, image)
  return base if sample == 0 else jax.random.fold_in(base, sample)


def check_samples(predictor, samples: int) -> None:
  if samples < 1:
    raise OptionError(f"--samples must be >= 1, got {samples}")
  if samples > 1 and not predictor.noisy:
    raise OptionError(f"--samples {samples}: {predictor.describe()} draws no noise, so every "
                      "sample would be the same image")


def predict_mean(predictor, inp, setting, key, image: int, samples: int, **kw):
  """The mean of `samples` independent samples for one image (the prediction itself for 1)."""
  total = None
  for k in range(samples):
    pred = np.asarray(reconstruct.predict_image(predictor, inp, setting,
                                                key=sample_key(key, image, k), **kw))
    total = pred.astype(np.float64) if total is None else total + pred
  return pred if samples == 1 else (total / samples).astype(pred.dtype)


def evaluate(run, predictor, files, protocol, settings, *, seed=0, progress=False,
             log=None, extra_metrics=None, look=True, samples: int = 1) -> tuple[dict, list]:
  """Scores every file under every tiling setting. Returns (results, report rows).
  look: also score the look round trip (sRGB -> RAW tasks with 3-channel RAW).
  samples: score the mean of this many samples per image (sampling tasks): the posterior
  mean a single sample only estimates, at `samples` times the network calls."""
  check_samples(predictor, samples)
  key = jax.random.PRNGKey(seed)
  io = predictor.io
  loaded, skipped = _load_all(files, protocol, log)
  with_look = bool(look) and io.source == "rgb" and io.target == "raw" and \
      protocol in PROTOCOL_GAMMA and reconstruct.out_scale(io) == 1
  per_image, rows = [], []
  for i, (path, pair) in enumerate(loaded):
    inp, true = pair[io.source], pair[io.target]
    camera = pair["camera"] if io.camera else None
    entry = {"file": str(path), "size": [int(inp.shape[0]), int(inp.shape[1])], "results": {}}
    if with_look:
      t = look_score(true, inp, protocol, pair["look"])
      entry["look_true_raw"] = {"psnr": t["look_psnr"], "de2000": t["look_de2000"]}
    for j, s in enumerate(settings):
      layout = s.layout(inp.shape, predictor.patch)
      predictor.warm(len(layout), camera)
      t0 = time.perf_counter()
      pred = predict_mean(predictor, inp, s, key, i, samples, progress=progress,
                          desc=path.name, camera=camera)
      secs = time.perf_counter() - t0
      r = score(pred, true, layout, extra_metrics)
      r.update(seconds=secs, patches=len(layout))
      if with_look:
        r.update(look_score(pred, inp, protocol, pair["look"]))
      entry["results"][s.name] = r
      if j == 0:
        rows.append((path.name, inp, pred, true, r["raw_psnr"]))
      if log:
        looks = (f"; look PSNR {r['look_psnr']:.2f} dB, CIEDE2000 {r['look_de2000']:.2f}"
                 if with_look else "")
        log(f"{path.name} [{s.name}]: {target_name(io)} PSNR {r['raw_psnr']:.2f} dB "
            f"(3x3 tiles), {secs:.2f} s{looks}")
    per_image.append(entry)

  summary = []
  for s in settings:
    rs = [e["results"][s.name] for e in per_image]
    mean = lambda k: float(np.mean([r[k] for r in rs if r[k] is not None])) if any(
        r[k] is not None for r in rs) else None
    summary.append(dict(name=s.name, grid=s.grid, overlap=s.overlap,
                        shared_noise=s.shared_noise, mean_raw_psnr=mean("raw_psnr"),
                        mean_raw_psnr_full=mean("raw_psnr_full"),
                        mean_raw_ssim=mean("raw_ssim"), mean_seam_ratio=mean("seam_ratio"),
                        seconds_per_image=mean("seconds"),
                        mean_look_psnr=mean("look_psnr") if with_look else None,
                        mean_look_de2000=mean("look_de2000") if with_look else None))
  results = {
      "workdir": run.workdir, "step": run.step, "task": run.task.name,
      "target": io.target,  # what *_raw_psnr measures
      "sampler": predictor.options.sampler, "steps": predictor.options.steps,
      "nfe": predictor.nfe * samples, "nfe_per_sample": predictor.nfe, "samples": samples,
      "sampler_options": predictor.options.extras(),
      "protocol": protocol, "devices": predictor.n_dev, "max_batch": predictor.max_batch,
      "n_images": len(per_image), "skipped": skipped,
      "mean_raw_psnr": summary[0]["mean_raw_psnr"],
      "seconds_per_image": summary[0]["seconds_per_image"],
      "compile_seconds": {str(k): v for k, v in predictor.compile_seconds.items()},
      "rgb_metrics": None,  # no forward model in this task
      "settings": summary, "images": per_image,
      "mean_look_psnr": summary[0]["mean_look_psnr"],
      "mean_look_de2000": summary[0]["mean_look_de2000"],
      "mean_look_true_raw_psnr": _mean_of(e.get("look_true_raw", {}).get("psnr")
                                          for e in per_image),
      "mean_look_true_raw_de2000": _mean_of(e.get("look_true_raw", {}).get("de2000")
                                            for e in per_image),
  }
  return results, rows


def _mean_of(values):
  vs = [v for v in values if v is not None]
  return float(np.mean(vs)) if vs else None


def evaluate_roundtrip(run, files, protocol, log=None) -> tuple[dict, list]:
  """A rendering task's own protocol (jisp.infer.roundtrip) at the run's JPEG settings."""
  quality, subsampling = roundtrip.jpeg_settings(run.config)
  loaded, skipped = _load_all(files, protocol, log)
  pair_list = [dict(name=p.name, **pair) for p, pair in loaded]
  if run.task.io.window > 1:
    return _evaluate_video(run, pair_list, protocol, quality, subsampling, skipped, log)
  t0 = time.perf_counter()
  res = roundtrip.evaluate_pairs(run.task, run.params, pair_list, quality=quality,
                                 subsampling=subsampling)
  secs = (time.perf_counter() - t0) / len(pair_list)
  fwd = jax.jit(lambda p, x: run.task.render(p, x[None])[0])
  inv = jax.jit(lambda p, y: run.task.predict(p, y[None], None, None)[0])
  rows = []
  for pr in pair_list:
    rendered = images.to_uint8(np.asarray(fwd(run.params, pr["raw"])))
    decoded = images.jpeg_roundtrip(rendered, quality, subsampling) / 255.0
    pred = np.asarray(inv(run.params, decoded.astype(np.float32)))
    psnr_img = res["files"][pr["name"]]["raw_psnr"]
    rows.append((pr["name"], decoded, pred, pr["raw"], psnr_img))
    if log:
      log(f"{pr['name']}: RAW PSNR {psnr_img:.2f} dB (3x3 tiles, from a real JPEG "
          f"q{quality} {subsampling} of the rendering)")
  results = {
      "workdir": run.workdir, "step": run.step, "task": run.task.name, "target": "raw",
      "protocol": protocol, "n_images": len(pair_list), "skipped": skipped,
      "mean_raw_psnr": res["raw_psnr"], "seconds_per_image": secs,
      "rgb_metrics": {"rgb_psnr": res["rgb_psnr"], "rgb_ssim": res["rgb_ssim"]},
      "compression_ratio": res["compression_ratio"], "bpp": res["bpp"],
      "jpeg_quality": quality, "jpeg_subsampling": subsampling, "files": res["files"],
  }
  return results, rows


def _evaluate_video(run, pair_list, protocol, quality, subsampling, skipped, log):
  t0 = time.perf_counter()
  res = roundtrip.evaluate_video_pairs(run.task, run.params, pair_list, quality=quality,
                                       subsampling=subsampling)
  secs = (time.perf_counter() - t0) / len(pair_list)
  if log:
    for name, r in res["files"].items():
      log(f"{name}: RAW PSNR {r['raw_psnr']:.2f} dB over {res['frames']} frames (motion-JPEG "
          f"q{quality} {subsampling} of the rendering), temporal PSNR {r['temporal_psnr']:.2f} dB")
  results = {
      "workdir": run.workdir, "step": run.step, "task": run.task.name, "target": "raw",
      "protocol": protocol, "video": True, "n_images": len(pair_list), "skipped": skipped,
      "mean_raw_psnr": res["raw_psnr"], "temporal_psnr": res["temporal_psnr"],
      "frames": res["frames"], "seconds_per_image": secs, "bpp": res["bpp"],
      "jpeg_quality": quality, "jpeg_subsampling": subsampling, "files": res["files"],
      "rgb_metrics": None,
  }
  return results, []


def target_name(io) -> str:
  return "sRGB" if io.target == "rgb" else "RAW"


def write_results(out, results: dict, rows, data) -> dict:
  """OUT/results.json and OUT/report.png (a run's: WORKDIR/eval), both atomic; returns
  their paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  results["data"] = str(data)
  results["report"] = str(out / "report.png")
  names = ("input", "prediction", "truth")
  images.write_png(out / "report.png", report.report_image(rows, names=names))
  atomic_write_json(out / "results.json", results)
  return {"results": str(out / "results.json"), "report": str(out / "report.png")}


def tiling_table(settings) -> str:
  lines = ["| tiling | RAW PSNR (3x3 tiles) | whole-image PSNR | seam ratio | s/image |",
           "| --- | --- | --- | --- | --- |"]
  for s in settings:
    lines.append(f"| {s['name']} | {s['mean_raw_psnr']:.2f} | {s['mean_raw_psnr_full']:.2f} "
                 f"| {s['mean_seam_ratio']:.2f} | {s['seconds_per_image']:.2f} |")
  return "\n".join(lines)


def summary_lines(results: dict) -> list[str]:
  """What `jisp eval` prints for humans."""
  if results.get("video"):
    return [f"RAW PSNR {results['mean_raw_psnr']:.2f} dB per frame ({results['frames']} "
            f"frames, motion-JPEG q{results['jpeg_quality']} {results['jpeg_subsampling']}), "
            f"temporal PSNR {results['temporal_psnr']:.2f} dB; {results['bpp']:.2f} bpp; "
            f"{results['n_images']} clips"]
  if results.get("rgb_metrics"):
    return [f"RAW PSNR {results['mean_raw_psnr']:.2f} dB from a real JPEG "
            f"q{results['jpeg_quality']} {results['jpeg_subsampling']} of the rendering; "
            f"rendering RGB PSNR {results['rgb_metrics']['rgb_psnr']:.2f} dB, SSIM "
            f"{results['rgb_metrics']['rgb_ssim']:.4f}; JPEG {results['bpp']:.2f} bpp, "
            f"compression ratio {results['compression_ratio']:.1f}; {results['n_images']} images"]
  s = results["settings"][0]
  name = "sRGB" if results["target"] == "rgb" else "RAW"
  of = (f", each the mean of {results['samples']} samples"
        if results.get("samples", 1) > 1 else "")
  lines = [f"{name} PSNR {s['mean_raw_psnr']:.2f} dB (3x3 tiles, mean of "
           f"{results['n_images']} images{of}), {s['seconds_per_image']:.2f} s/image"]
  if s.get("mean_look_psnr") is not None:
    lines.append(f"look round trip (LibRaw rendering of the DNG vs the input sRGB): PSNR "
                 f"{s['mean_look_psnr']:.2f} dB, mean CIEDE2000 {s['mean_look_de2000']:.2f}; "
                 f"the true RAW scores {results['mean_look_true_raw_psnr']:.2f} dB, "
                 f"{results['mean_look_true_raw_de2000']:.2f}")
  if len(results["settings"]) > 1:
    lines.append(tiling_table(results["settings"]))
  return lines
