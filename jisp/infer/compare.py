"""`jisp compare`: every method on one table, on the same images, by the same code.

Methods are trained runs (named by their workdir) and methods without training
(`jisp.train.runs.BASELINES`, e.g. UPI with each test file's own camera metadata). Every
method inverts the same input: the protocol's sRGB of each test file (LibRaw's rendering
stored as a real JPEG, jisp.data.pairs; what `jisp eval`'s tiled path feeds), tiled with
the same rule (`jisp.infer.reconstruct.predict_image`, each method at its own patch size)
and scored by `jisp.infer.evaluate.score`:

  invisp / linear  RAW PSNR over 3x3 tiles (InvISP's protocol) and SSIM of the
                   (H, W, 3) RAW target
  aim              the AIM 2022 challenge's PSNR and SSIM (jisp.core.metrics.aim_psnr /
                   aim_ssim) of the packed RGGB RAW (H/2, W/2, 4)

Sampler settings are the ones the caller gives (one PredictOptions for every method that
samples; deterministic methods run their one pass). A method that renders (io.direction
"both", the flow ISP) also gets InvISP's own protocol, inverting a real JPEG of its own
rendering (jisp.infer.roundtrip): a separate, labelled column, never mixed with the
shared-input numbers, with the RGB PSNR of that rendering. A method that cannot be loaded
or fails on the data is reported in its row (status "failed", the error in one line);
the others still run.

Outputs (`write_outputs`): OUT/compare.md (the table), OUT/compare.json (everything,
per image), OUT/compare.png (the same crop of each test image for every method next to the
input and the truth, with error maps).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jisp.core import images, metrics
from jisp.core.errors import DataError, InputError, OptionError, UserError
from jisp.core.fileio import atomic_write_json, atomic_write_text, load_manifest
from jisp.infer import evaluate, reconstruct, report, roundtrip
from jisp.train import runs

AIM = "aim"
DISPLAY_GAMMA = 2.2  # linear RAW (packed / `linear` protocol) is shown gamma-compressed


@dataclasses.dataclass
class Method:
  """One row: a trained run or a baseline, loaded (run) or not (error)."""
  name: str
  source: str            # the workdir, or "baseline:NAME"
  run: object = None     # jisp.train.runs.Run
  error: str | None = None


def one_line(e: BaseException) -> str:
  msg = " ".join(str(e).split())
  return msg if isinstance(e, UserError) else f"{type(e).__name__}: {msg}"


def run_names(workdirs) -> list[str]:
  """Row names: each workdir's folder name, with its parent where two share one."""
  paths = [Path(w).resolve() for w in workdirs]
  names = [p.name for p in paths]
  return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
          for p in paths]


def load_methods(workdirs=(), baselines=(), protocol: str | None = None) -> list[Method]:
  """Methods for the runs and baselines; one that cannot be loaded keeps its error.
  protocol: the baselines' RAW protocol (None: their config's)."""
  out = []
  for name, wd in zip(run_names(workdirs), workdirs):
    try:
      out.append(Method(name, str(wd), runs.load_run(wd)))
    except Exception as e:  # noqa: BLE001 - a broken run is a row, not the end
      out.append(Method(name, str(wd), error=one_line(e)))
  for b in baselines:
    try:
      ovr = [f"--config.data.protocol={protocol}"] if protocol else []
      out.append(Method(b, f"baseline:{b}", runs.baseline_run(b, ovr)))
    except Exception as e:  # noqa: BLE001
      out.append(Method(b, f"baseline:{b}", error=one_line(e)))
  return out


def method_protocol(run) -> str:
  return reconstruct.data_protocol(run.config)


def folder_protocol(data_dir) -> str | None:
  """The protocol a prepared folder (manifest.json) was made in; None for a folder of RAW
  files or an AIM 2022 folder (which can be paired in any protocol / is `aim`)."""
  d = Path(data_dir)
  if not (d / "manifest.json").is_file():
    return None
  return load_manifest(d).get("protocol", "invisp")


def comparison_protocol(methods, protocol: str | None = None, data_dir=None) -> str:
  """The RAW space compared in: the prepared folder's protocol (a different `protocol`
  asked for is refused), else the one given, else the first trained run's, else invisp.
  Runs of another protocol are then refused in their rows (evaluate_method)."""
  folder = folder_protocol(data_dir) if data_dir is not None else None
  if folder is not None:
    if protocol and protocol != folder:
      raise OptionError(f"{Path(data_dir) / 'manifest.json'}: prepared in protocol "
                        f"{folder!r}, but --protocol {protocol} was asked for")
    return folder
  if protocol:
    return protocol
  for m in methods:
    if m.run is not None and m.run.workdir:
      return method_protocol(m.run)
  return "invisp"


# --------------------------------------------------------------------------- data

def _protocol_config(protocol: str):
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict({"protocol": protocol, "dir": ""})
  return c


def _aim_folder(d: Path) -> bool:
  from jisp.data import aim
  try:
    aim.list_pairs(d, "test")
    return True
  except (DataError, ValueError):
    return False


def test_items(data_dir, protocol: str) -> tuple[list[dict], str]:
  """[{'path', 'camera' (name or None), 'kind' raw|aim}] of the test split, and a
  description. data_dir: a prepared folder (its test split), a folder of RAW files, or
  (protocol aim) an AIM 2022 folder (its test split)."""
  d = Path(data_dir)
  if protocol == AIM and d.is_dir() and not (d / "manifest.json").is_file() and _aim_folder(d):
    from jisp.data import aim
    pairs = aim.list_pairs(d, "test")
    return ([{"path": str(rgb), "raw_file": str(raw), "camera": None, "kind": "aim"}
             for rgb, raw in pairs],
            f"AIM 2022 folder {d}, test split ({len(pairs)} pairs)")
  if protocol == AIM and (d / "manifest.json").is_file():
    # Prepared folders hold same-resolution shards: only their file list is used here.
    man = load_manifest(d)
    raw_dir = Path(man.get("raw_dir", d))
    files = [raw_dir / f["path"] for f in man.get("files", [])
             if f.get("status") == "ok" and f.get("split") == "test"]
    if not files:
      raise DataError(f"{d / 'manifest.json'}: no test-split files to compare on")
    desc = f"test split of {d / 'manifest.json'} ({len(files)} files)"
  elif protocol == AIM:
    if not d.is_dir():
      raise DataError(f"{d}: no such folder")
    from jisp.data.prepare import list_raw_files
    files = list_raw_files(d)
    if not files:
      raise DataError(f"{d}: no manifest.json, no RAW files and no AIM 2022 pairs")
    desc = f"RAW folder {d} ({len(files)} files)"
  else:
    files, _, desc = evaluate.eval_files(d, _protocol_config(protocol))
  cams = {}
  if (d / "manifest.json").is_file():
    man = load_manifest(d)
    raw_dir = Path(man.get("raw_dir", d))
    cams = {str(raw_dir / f["path"]): f.get("camera") for f in man.get("files", [])}
  return [{"path": str(p), "camera": cams.get(str(p)), "kind": "raw"} for p in files], desc


def load_item(item: dict, protocol: str) -> dict:
  """{'name', 'camera', 'rgb', 'raw', 'bits', 'camera_features'} of one test item."""
  from jisp.data import aim
  if item["kind"] == "aim":
    pair = aim.load_pair(item["path"], item["raw_file"])
    return {"name": pair["name"], "camera": "AIM", "rgb": pair["rgb"], "raw": pair["raw"],
            "bits": 10, "camera_features": None}
  if protocol == AIM:
    pair = aim.load_raw_file(item["path"])
    camera = item["camera"] or pair["meta"].get("camera")
  else:
    pair = evaluate.load_pair(item["path"], protocol)
    camera = item["camera"]
    if not camera:
      from jisp.data import raw_io
      camera = raw_io.read_capture(item["path"]).camera
  return {"name": Path(item["path"]).name, "camera": camera or "unknown",
          "rgb": pair["rgb"], "raw": pair["raw"], "bits": pair["bits"],
          "camera_features": pair["camera"]}


def load_items(items, protocol: str, log=None) -> tuple[list[dict], list[str]]:
  return evaluate.load_each(items, lambda it: load_item(it, protocol), log=log,
                            what="test image could be read",
                            errors=(OSError, InputError, DataError, ValueError))


# --------------------------------------------------------------------------- scoring

def score(pred, true, layout, protocol: str) -> dict:
  """evaluate.score's numbers; under the aim protocol raw_psnr / raw_ssim are AIM's (the
  3x3-tile PSNR is kept as raw_psnr_tiles)."""
  r = evaluate.score(pred, true, layout)
  if protocol == AIM:
    r["raw_psnr_tiles"] = r["raw_psnr"]
    r["raw_psnr"] = float(metrics.aim_psnr(pred, true))
    r["raw_ssim"] = (float(metrics.aim_ssim(pred, true))
                     if min(pred.shape[:2]) > 2 * metrics.AIM_SSIM_CROP else None)
  return r


def _mean(vals):
  vals = [v for v in vals if v is not None]
  return float(np.mean(vals)) if vals else None


def method_options(task, options):
  """The sampler settings for `task`: the given ones if it samples, else None (its one
  deterministic pass)."""
  if options is None:
    return None
  samples = task.io.noise_channels > 0 or task.default_options().sampler not in (None, "none")
  return options if samples else None


def _param_count(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def evaluate_method(m: Method, pairs, protocol: str, tile_args: dict, *, options=None,
                    max_batch: int = 256, devices=None, net_chunk="auto", seed: int = 0,
                    advance=None, keep=None) -> tuple[dict, list]:
  """(row, kept): one row (see the module docstring), and keep(i, prediction) of each
  image (the figure's crops); raises on failure (the caller records it). advance: called
  once per image (progress)."""
  from jisp.infer.predict import PatchPredictor
  run = m.run
  task = run.task
  io = task.io
  if io.source != "rgb" or io.target != "raw":
    raise UserError(f"{task.name} maps {io.source} -> {io.target}; the comparison inverts "
                    "sRGB to RAW")
  mp = method_protocol(run)
  if mp != protocol:
    raise UserError(f"refused: trained in protocol {mp!r}, the test data is compared in "
                    f"protocol {protocol!r}")
  predictor = PatchPredictor(task, run.params, method_options(task, options),
                             max_batch=max_batch, devices=devices, net_chunk=net_chunk)
  tile = reconstruct.make_tiling(predictor.patch, **tile_args)
  key = jax.random.PRNGKey(seed)
  per_image, kept = [], []
  for i, pr in enumerate(pairs):
    camera = pr["camera_features"] if io.camera else None
    inp, true = pr["rgb"], pr["raw"]
    layout = tile.layout(inp.shape, predictor.patch, reconstruct.out_scale(io))
    predictor.warm(len(layout), camera)
    t0 = time.perf_counter()
    pred = reconstruct.predict_image(predictor, inp, tile, key=jax.random.fold_in(key, i),
                                     camera=camera)
    secs = time.perf_counter() - t0
    if pred.shape != true.shape:
      raise UserError(f"predicts {pred.shape} for {pr['name']}, whose RAW target is "
                      f"{true.shape} (a model of another protocol?)")
    r = score(pred, true, layout, protocol)
    r.update(file=pr["name"], camera=pr["camera"], seconds=secs, patches=len(layout))
    per_image.append(r)
    if keep is not None:
      kept.append(keep(i, pred))
    if advance:
      advance()
  row = {"task": task.name, "params": _param_count(run.params), "steps": run.step,
         "nfe": predictor.nfe, "sampler": predictor.describe(),
         "sampler_options": {"sampler": predictor.options.sampler,
                             "steps": predictor.options.steps, **predictor.options.extras()},
         "patch": predictor.patch, "tiling": tile.name, "images": per_image,
         "mean_raw_psnr": _mean(r["raw_psnr"] for r in per_image),
         "mean_raw_ssim": _mean(r["raw_ssim"] for r in per_image),
         "seconds_per_image": _mean(r["seconds"] for r in per_image),
         "per_camera": _per_camera(per_image), "renders": io.direction == "both",
         "rgb_psnr": None, "rgb_ssim": None, "own_render_raw_psnr": None}
  if io.direction == "both":
    quality, subsampling = roundtrip.jpeg_settings(run.config)
    res = roundtrip.evaluate_pairs(task, run.params,
                                   [dict(name=p["name"], rgb=p["rgb"], raw=p["raw"],
                                         bits=p["bits"]) for p in pairs],
                                   quality=quality, subsampling=subsampling)
    row.update(rgb_psnr=res["rgb_psnr"], rgb_ssim=res["rgb_ssim"],
               own_render_raw_psnr=res["raw_psnr"], own_render_jpeg=f"q{quality} {subsampling}",
               own_render_files={k: v["raw_psnr"] for k, v in res["files"].items()})
  return row, kept


def _per_camera(per_image) -> dict:
  out = {}
  for cam in sorted({r["camera"] for r in per_image}):
    rs = [r for r in per_image if r["camera"] == cam]
    out[cam] = {"raw_psnr": _mean(r["raw_psnr"] for r in rs),
                "raw_ssim": _mean(r["raw_ssim"] for r in rs), "n_images": len(rs)}
  return out


def compare(methods, data_dir, *, protocol: str | None = None, options=None,
            overlap=None, grid: bool = False, shared_noise: bool = False,
            max_images: int | None = None, max_batch: int = 256, devices=None,
            net_chunk="auto", seed: int = 0, progress: bool = True, log=None,
            crop: int = 192) -> tuple[dict, dict]:
  """Evaluates every method on the test split of data_dir (module docstring).

  Returns (results, figure): results is what compare.json holds; figure the crops for
  compare.png (write_outputs draws it).
  """
  protocol = comparison_protocol(methods, protocol, data_dir)
  items, desc = test_items(data_dir, protocol)
  if max_images is not None:
    items = items[:max(1, int(max_images))]
  pairs, skipped = load_items(items, protocol, log)
  if log:
    log(f"jisp compare: {len(methods)} methods, {desc}, protocol {protocol}")
  tile_args = dict(overlap=overlap, grid=grid, shared_noise=shared_noise)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(pairs) * len(methods), desc="compare", unit="image",
               file=sys.stderr)
  boxes = crop_boxes(pairs, crop)
  keep = lambda i, pred: (crop_of(pred, boxes[i], pairs[i]) if i < len(boxes) else None)
  rows, crops = [], {}
  try:
    for m in methods:
      row = {"name": m.name, "source": m.source, "status": "ok", "error": m.error}
      done = [0]

      def advance(done=done):
        done[0] += 1
        if bar is not None:
          bar.update(1)
      if m.run is not None:
        row.update(task=m.run.task.name, steps=m.run.step)
        try:
          if bar is not None:
            bar.set_postfix_str(m.name)
          r, preds = evaluate_method(m, pairs, protocol, tile_args, options=options,
                                     max_batch=max_batch, devices=devices,
                                     net_chunk=net_chunk, seed=seed, advance=advance,
                                     keep=keep)
          row.update(r)
          crops[m.name] = preds
        except Exception as e:  # noqa: BLE001 - one method's failure is its row
          row["error"] = one_line(e)
      if row["error"]:
        row["status"] = "failed"
        if bar is not None:
          bar.update(len(pairs) - done[0])
      if log:
        log(f"jisp compare: {m.name}: " + (f"failed: {row['error']}" if row["error"] else
            f"RAW PSNR {row['mean_raw_psnr']:.2f} dB, {row['seconds_per_image']:.2f} s/image"))
      rows.append(row)
  finally:
    if bar is not None:
      bar.close()
  results = {
      "protocol": protocol, "data": str(data_dir), "data_description": desc,
      "files": [{"file": p["name"], "camera": p["camera"],
                 "size": [int(p["rgb"].shape[0]), int(p["rgb"].shape[1])]} for p in pairs],
      "skipped": skipped, "cameras": sorted({p["camera"] for p in pairs}),
      "options": None if options is None else dataclasses.asdict(options),
      "tiling": {"overlap": overlap, "grid": grid, "shared_noise": shared_noise},
      "devices": jax.device_count() if devices is None else devices, "seed": seed,
      "metrics": metric_description(protocol), "methods": rows,
  }
  figure = {"protocol": protocol, "images": [
      {"name": pairs[i]["name"], "box": list(b), "input": crop_of(pairs[i]["rgb"], b, None),
       "truth": crop_of(pairs[i]["raw"], b, pairs[i]),
       "methods": {n: c[i] for n, c in crops.items()}} for i, b in enumerate(boxes)]}
  return results, figure


def metric_description(protocol: str) -> str:
  if protocol == AIM:
    return ("AIM 2022 scoring of the packed RGGB RAW (H/2, W/2, 4) in [0, 1]: PSNR over all "
            "values, SSIM per channel (Gaussian sigma 1.5, 13 taps, population covariance, "
            "5 px border crop), means over images")
  return (f"RAW PSNR over 3x3 tiles (InvISP's protocol) and SSIM (Gaussian sigma 1.5) of "
          f"the {protocol} RAW target (H, W, 3) in [0, 1], means over images")


# --------------------------------------------------------------------------- outputs

def display(x, protocol: str) -> np.ndarray:
  """A RAW crop as a displayable (h, w, 3) image: packed as (R, mean G, B), linear spaces
  gamma-compressed."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  if x.shape[-1] == 4:
    x = np.stack([x[..., 0], 0.5 * (x[..., 1] + x[..., 2]), x[..., 3]], -1)
  if protocol in (AIM, "linear"):
    x = x ** (1.0 / DISPLAY_GAMMA)
  return x


def _crop_box(h: int, w: int, size: int, scale: int) -> tuple[int, int, int]:
  """(top, left, side) of a centred square crop, all multiples of `scale`."""
  side = max(scale, min(size, h, w) // scale * scale)
  top = (h - side) // 2 // scale * scale
  left = (w - side) // 2 // scale * scale
  return top, left, side


FIGURE_IMAGES = 4


def crop_boxes(pairs, size: int) -> list[tuple[int, int, int]]:
  """The figure's centred crop (top, left, side) in input pixels of the first images,
  on multiples of the RAW's scale (2 for packed RAW)."""
  return [_crop_box(*pr["rgb"].shape[:2], size, pr["rgb"].shape[0] // pr["raw"].shape[0])
          for pr in pairs[:FIGURE_IMAGES]]


def crop_of(img, box, pair) -> np.ndarray:
  """The box of an input-resolution image (pair None) or of a RAW-resolution one."""
  top, left, side = box
  k = 1 if pair is None else pair["rgb"].shape[0] // pair["raw"].shape[0]
  return np.array(img[top // k:(top + side) // k, left // k:(left + side) // k])


def figure_image(figure: dict, method_names, scores: dict, panel: int = 160) -> np.ndarray:
  """compare.png: per test image a row of input | truth | methods, and under the methods
  their |error| maps (report.error_map, white = report.ERROR_SCALE); a failed method is a
  grey panel."""
  from PIL import Image, ImageDraw
  protocol = figure["protocol"]
  gap, label_h, head = 4, 14, 18
  cols = 2 + len(method_names)
  W = cols * panel + (cols - 1) * gap
  H = head + len(figure["images"]) * (2 * (panel + label_h) + 3 * gap)
  canvas = Image.new("RGB", (W, max(H, head + 1)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  draw.text((4, 3), f"same crop, every method; |error| white = {report.ERROR_SCALE}",
            fill=(0, 0, 0))

  def paste(img, c, y):
    a = Image.fromarray(images.to_uint8(img)).resize((panel, panel), Image.NEAREST)
    canvas.paste(a, (c * (panel + gap), y))

  y = head
  for k, im in enumerate(figure["images"]):
    truth = im["truth"]
    labels = [f"input {im['name']}"[:26], "truth"] + [
        (f"{n} {scores[n][k]:.2f}" if scores.get(n) and scores[n][k] is not None
         else f"{n} failed")[:26] for n in method_names]
    for c, t in enumerate(labels):
      draw.text((c * (panel + gap) + 2, y), t, fill=(0, 0, 0))
    y += label_h
    paste(im["input"], 0, y)
    paste(display(truth, protocol), 1, y)
    for c, n in enumerate(method_names, start=2):
      pred = im["methods"].get(n)
      if pred is None:
        draw.rectangle([c * (panel + gap), y, c * (panel + gap) + panel - 1, y + panel - 1],
                       fill=(180, 180, 180))
      else:
        paste(display(pred, protocol), c, y)
    y += panel + gap + label_h
    for c, n in enumerate(method_names, start=2):
      pred = im["methods"].get(n)
      if pred is not None:
        paste(report.error_map(pred, truth), c, y)
    y += panel + 2 * gap
  return np.asarray(canvas)


def _fmt(v, nd=2):
  return "–" if v is None else f"{v:.{nd}f}"


def markdown_table(results: dict) -> str:
  """compare.md: the paper-style table (module docstring) and what it was measured on."""
  cams = results["cameras"]
  aim = results["protocol"] == AIM
  head = ["method", "task", "params", "training steps"]
  for c in cams:
    head += [f"RAW PSNR {c}", f"SSIM {c}"]
  if len(cams) > 1:
    head += ["RAW PSNR mean", "SSIM mean"]
  head += ["RGB PSNR (renders)", "RAW PSNR, own rendering (InvISP protocol)", "s/image",
           "NFE", "sampler"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in results["methods"]:
    if r["status"] != "ok":
      cells = [r["name"], r.get("task") or "–", "–", _steps(r)] + ["–"] * (len(head) - 5) + \
              [f"FAILED: {r['error']}"]
      lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
      continue
    cells = [r["name"], r["task"], f"{r['params']:,}", _steps(r)]
    for c in cams:
      pc = r["per_camera"].get(c, {})
      cells += [_fmt(pc.get("raw_psnr")), _fmt(pc.get("raw_ssim"), 4)]
    if len(cams) > 1:
      cells += [_fmt(r["mean_raw_psnr"]), _fmt(r["mean_raw_ssim"], 4)]
    cells += [_fmt(r["rgb_psnr"]), _fmt(r["own_render_raw_psnr"]),
              _fmt(r["seconds_per_image"]), str(r["nfe"]), r["sampler"]]
    lines.append("| " + " | ".join(cells) + " |")
  what = ("AIM 2022 PSNR / SSIM of the packed RAW" if aim else
          "RAW PSNR (dB, 3x3 tiles) / SSIM")
  files = ", ".join(f"{f['file']} ({f['camera']}, {f['size'][1]}x{f['size'][0]})"
                    for f in results["files"])
  notes = [
      "", f"{what}; every method inverts the same input, the protocol's sRGB (LibRaw's "
      f"rendering stored as a real JPEG). Protocol {results['protocol']}: "
      f"{results['metrics']}.",
      f"Data: {results['data_description']}: {files}.",
      "RGB PSNR: the method's own rendering against LibRaw's sRGB (methods that render). "
      "'own rendering': InvISP's test protocol, the RAW inverted from a real JPEG of the "
      "method's own rendering (only a method that renders can do this; not comparable with "
      "the shared-input columns).",
      "s/image: tiled prediction wall time, compilation excluded; NFE: network evaluations "
      "per patch.",
  ]
  if results["skipped"]:
    notes.append(f"Skipped files: {'; '.join(results['skipped'])}.")
  return "\n".join(lines + notes) + "\n"


def _steps(r) -> str:
  if r["source"].startswith("baseline:"):
    return "– (no training)"
  return "–" if r.get("steps") is None else f"{r['steps']:,}"


def write_outputs(out, results: dict, figure: dict) -> dict:
  """OUT/compare.md, compare.json, compare.png (atomic); returns their paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  names = [r["name"] for r in results["methods"]]
  scores = {}
  for r in results["methods"]:
    if r["status"] == "ok":
      scores[r["name"]] = [img["raw_psnr"] for img in r["images"]]
  paths = {"md": out / "compare.md", "json": out / "compare.json", "png": out / "compare.png"}
  images.write_png(paths["png"], figure_image(figure, names, scores))
  atomic_write_text(paths["md"], markdown_table(results))
  atomic_write_json(paths["json"], dict(results, outputs={k: str(v) for k, v in paths.items()}))
  return {k: str(v) for k, v in paths.items()}
