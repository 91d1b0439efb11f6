"""`jisp reconstruct`: sRGB images (JPEG / PNG / TIFF) in, camera RAW (DNG) out.

For each input:
  OUT/<stem>.dng          Bayer mosaic in the camera's layout and levels, readable by LibRaw
  OUT/<stem>_preview.png  the predicted RAW as the network sees it (white-balanced, gamma)
  OUT/<stem>_raw16.tif    the demosaiced linear camera RAW (black 0, white 65535, no white
                          balance), 16-bit: the DNG before its mosaic

The network predicts RAW in the training protocol's space (`invisp`: white-balanced, gamma
1/2.2, [0, 1]). To make a DNG it is gamma-expanded, divided by the camera's white balance,
mosaicked with the camera's Bayer layout and scaled to its [black, white] codes. The camera
profile (layout, levels, white balance, colour matrix) comes from `--like REFERENCE_RAW`,
else from the training data's manifest (`cameras` block, the camera with most files), else
the documented DEFAULT_PROFILE (synthetic-source runs), and each output line says which.
DNGs need even sizes: an odd last row/column is dropped from the DNG only.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jisp.infer import images, predict, tiling
from jisp.infer.args import add_common_args, add_reconstruct_args  # noqa: F401 (CLI)
from jisp.isp import bayer, tone

# XYZ -> linear sRGB (D65), the inverse of LibRaw's sRGB -> XYZ: as a DNG ColorMatrix it says
# "camera RGB is linear sRGB", the honest choice when the camera is unknown.
_XYZ_TO_SRGB = np.linalg.inv(np.array([[0.412453, 0.357580, 0.180423],
                                       [0.212671, 0.715160, 0.072169],
                                       [0.019334, 0.119193, 0.950227]]))

DEFAULT_PROFILE = {
    "pattern": "RGGB", "black_level": [0.0, 0.0, 0.0, 0.0], "white_level": 4095.0,
    "wb": [1.0, 1.0, 1.0], "color_matrix": _XYZ_TO_SRGB.tolist(), "bits": 12,
}
DEFAULT_DESC = ("default profile (no camera in the training data): RGGB, 12-bit, black 0, "
                "white 4095, white balance 1, sRGB colour matrix")
PROTOCOL_GAMMA = {"invisp": 2.2, "linear": None}


class ReconstructError(ValueError):
  """One-line user error (bad option or input)."""


# --------------------------------------------------------------------------- camera profile

def profile_from_capture(cap) -> dict:
  cm = cap.color_matrix
  return {"pattern": cap.pattern,
          "black_level": [float(b) for b in np.asarray(cap.black_level).reshape(-1)],
          "white_level": float(cap.white_level),
          "wb": [float(x) for x in np.asarray(cap.wb).reshape(-1)],
          "color_matrix": None if cm is None else np.asarray(cm, np.float64).tolist(),
          "bits": int(cap.bits), "camera": cap.camera}


def training_manifest(config):
  """(manifest dict, its path) of the run's prepared data folder, or (None, reason)."""
  d = str(config.data.get("dir", "") or "") if "data" in config else ""
  if not d:
    return None, "no data.dir"
  path = Path(d) / "manifest.json"
  if not path.is_file():
    return None, f"{path} not found"
  try:
    with open(path) as f:
      return json.load(f), str(path)
  except (OSError, json.JSONDecodeError) as e:
    return None, f"{path} unreadable ({e})"


def camera_profile(config, like=None) -> tuple[dict, str]:
  """(profile, one-line description of where it came from); see the module docstring."""
  if like:
    from jisp.data import raw_io  # rawpy: only when a reference RAW is given
    try:
      cap = raw_io.read_capture(like)
    except (raw_io.RawFormatError, FileNotFoundError) as e:
      raise ReconstructError(f"--like: {e}") from None
    return _complete(profile_from_capture(cap)), f"profile of {like} ({cap.camera})"
  man, where = training_manifest(config)
  cams = (man or {}).get("cameras") or {}
  if cams:
    name = max(sorted(cams), key=lambda c: int(cams[c].get("files", 0) or 0))
    prof = dict(cams[name], camera=name)
    return _complete(prof), f"training camera {name} ({where})"
  return dict(DEFAULT_PROFILE), DEFAULT_DESC


def _complete(prof: dict) -> dict:
  """Fills what a profile may lack (no colour matrix known) with the default's values."""
  out = dict(DEFAULT_PROFILE)
  out.update({k: v for k, v in prof.items() if v is not None})
  black = np.asarray(out["black_level"], np.float64).reshape(-1)
  out["black_level"] = (np.broadcast_to(black, (4,)) if black.size == 1 else black).tolist()
  return out


def data_protocol(config) -> str:
  man, _ = training_manifest(config)
  p = (man or {}).get("protocol") or config.data.get("protocol", "invisp")
  if p not in PROTOCOL_GAMMA:
    raise ReconstructError(f"protocol {p!r} cannot be turned into a DNG (supported: "
                           f"{', '.join(PROTOCOL_GAMMA)})")
  return p


# --------------------------------------------------------------------------- RAW space

def to_camera_linear(raw, protocol: str, wb) -> np.ndarray:
  """Predicted RAW (protocol space) -> linear camera RGB in [0, 1]: undo gamma, then the
  white balance (the protocol applied wb gains, then clipped)."""
  x = np.asarray(raw, np.float32)
  g = PROTOCOL_GAMMA[protocol]
  if g is not None:
    x = np.asarray(tone.gamma_expand(np.clip(x, 0, 1), g), np.float32)
  return np.clip(x / np.asarray(wb, np.float32).reshape(1, 1, 3), 0.0, 1.0)


def preview(raw, protocol: str) -> np.ndarray:
  """Displayable version of a protocol-space RAW (gamma applied where the space is linear)."""
  g = PROTOCOL_GAMMA[protocol]
  x = np.clip(np.asarray(raw, np.float32), 0, 1)
  return x if g is not None else np.asarray(tone.gamma_compress(x, 2.2), np.float32)


def mosaic_codes(linear_cam, profile: dict) -> np.ndarray:
  """(H, W, 3) linear camera RGB in [0, 1] -> uint16 Bayer codes in [black, white]
  (per CFA site black level), cropped to even H, W."""
  x = np.asarray(linear_cam, np.float32)
  h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  if h < 2 or w < 2:
    raise ReconstructError(f"image {x.shape[1]}x{x.shape[0]} too small for a Bayer mosaic")
  x = x[:h, :w]
  m = np.sum(x * bayer.cfa_mask(profile["pattern"], h, w), axis=-1)
  black = np.tile(np.asarray(profile["black_level"], np.float64).reshape(2, 2),
                  (h // 2, w // 2))
  codes = black + m.astype(np.float64) * (float(profile["white_level"]) - black)
  return np.clip(np.round(codes), 0, 65535).astype(np.uint16)


def write_outputs(out_dir, stem: str, raw, protocol: str, profile: dict) -> dict:
  """Writes the three files of one reconstruction; returns their paths."""
  from jisp.data import dng  # tifffile-based writer
  out_dir = Path(out_dir)
  lin = to_camera_linear(raw, protocol, profile["wb"])
  codes = mosaic_codes(lin, profile)
  paths = {"dng": out_dir / f"{stem}.dng", "preview": out_dir / f"{stem}_preview.png",
           "raw16": out_dir / f"{stem}_raw16.tif"}
  dng.write_dng(paths["dng"], codes, profile["pattern"], profile["black_level"],
                profile["white_level"], dng.neutral_from_wb(profile["wb"]),
                profile["color_matrix"], orientation=1, make="jisp",
                model=str(profile.get("camera", "reconstruction")) or "reconstruction")
  images.write_png(paths["preview"], preview(raw, protocol))
  images.write_tiff16(paths["raw16"], lin)
  return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- prediction

def layout_for(predictor, shape, *, overlap: int, grid: bool) -> tiling.Layout:
  return tiling.make_layout(shape[0], shape[1], predictor.patch, 0 if grid else overlap, grid)


def predict_image(predictor, rgb, *, overlap: int, grid: bool, shared_noise: bool, key,
                  progress: bool = False, desc: str = "") -> np.ndarray:
  """Tiled reconstruction of one (H, W, 3) sRGB image -> (H, W, C) RAW in [0, 1]."""
  layout = layout_for(predictor, rgb.shape, overlap=overlap, grid=grid)
  bar = None
  if progress:
    try:
      from tqdm import tqdm
      bar = tqdm(total=len(layout), desc=desc or "tiles", unit="patch", file=sys.stderr,
                 leave=False)
    except ImportError:
      bar = None
  try:
    fn = lambda p, z: predictor(p, z, key, progress=bar.update if bar else None)
    return tiling.reconstruct(rgb, fn, layout, key=jax.random.fold_in(key, 1 << 20),
                              channels=predictor.channels, shared_noise=shared_noise)
  finally:
    if bar is not None:
      bar.close()


def sampler_choice(args, config) -> tuple[str, int | None]:
  """(sampler, steps): --sampler/--steps, else the run config's sampling block."""
  name, steps = predict.default_sampler(config)
  if getattr(args, "sampler", None) and args.sampler != name:
    name = args.sampler
    steps = predict.DEFAULT_STEPS[name]
  if getattr(args, "steps", None) is not None:
    steps = args.steps
  if name == "ddpm" and steps is not None and int(steps) == int(
      config.diffusion.num_timesteps):
    steps = None
  return name, steps


def _stems(inputs):
  seen, out = set(), []
  for p in inputs:
    stem = Path(p).stem
    s, k = stem, 1
    while s in seen:  # a.jpg and a.png must not overwrite each other
      k += 1
      s = f"{stem}_{k}"
    seen.add(s)
    out.append(s)
  return out


# --------------------------------------------------------------------------- CLI

def make_predictor(run, args):
  sampler, steps = sampler_choice(args, run.config)
  kw = {}
  if getattr(args, "eta", None) is not None:
    if sampler not in ("ddim", "dtdm"):
      raise ReconstructError(f"--eta is an option of the ddim sampler (and DTDM runs), not "
                             f"of {sampler}")
    if not args.eta >= 0:
      raise ReconstructError(f"--eta must be >= 0, got {args.eta}")
    kw["eta"] = float(args.eta)
  return predict.PatchPredictor(run.task, run.params, sampler=sampler, steps=steps,
                                max_batch=args.max_batch, devices=args.devices,
                                sampler_kw=kw, net_chunk=getattr(args, "net_chunk", "auto"))


def overlap_of(args, patch: int) -> int:
  ov = patch // 4 if args.overlap is None else int(args.overlap)
  if args.grid:
    return 0
  if not 0 <= ov < patch:
    raise ReconstructError(f"--overlap must be in [0, {patch}) for {patch}x{patch} patches, "
                           f"got {ov}")
  return ov


def _err(cmd, msg):
  print(f"jisp {cmd}: error: {' '.join(str(msg).split())}", file=sys.stderr)


def read_raw_condition(path, protocol: str) -> np.ndarray:
  """A camera RAW file as the RAW condition of a RAW -> sRGB run (training protocol)."""
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(path)
  return np.asarray(pairs.make_pair(cap, raw_io.render_srgb(cap), protocol)["raw"], np.float32)


def run_reconstruct(args) -> int:
  """CLI body; returns the exit status (0 all written, 1 some inputs failed, 2 no run)."""
  try:
    run = predict.load_run(args.workdir)
    protocol = data_protocol(run.config)
    profile, desc = camera_profile(run.config, args.like)
    predictor = make_predictor(run, args)
    overlap = overlap_of(args, predictor.patch)
  except (predict.RunError, ReconstructError, ValueError) as e:
    _err("reconstruct", e)
    return 2
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  how = "inverse pass" if hasattr(run.task, "forward") else predictor.describe()
  print(f"jisp reconstruct: run {run.workdir} step {run.step}, {how}, "
        f"{'grid' if args.grid else f'overlap {overlap}'}"
        f"{', shared noise' if args.shared_noise else ''}, camera: {desc}", flush=True)
  key = jax.random.PRNGKey(args.seed)
  failed = 0
  to_rgb = getattr(run.task, "cond_key", "rgb") == "raw"  # DiffRAW: RAW file in, sRGB out
  for i, (path, stem) in enumerate(zip(args.inputs, _stems(args.inputs))):
    try:
      rgb = read_raw_condition(path, protocol) if to_rgb else images.read_image(path)[0]
    except (images.ImageError, ValueError, OSError) as e:
      _err("reconstruct", e)
      failed += 1
      continue
    # Compile outside the timing (once per chunk size; later images reuse it).
    predictor.warm(len(layout_for(predictor, rgb.shape, overlap=overlap, grid=args.grid)))
    t0 = time.perf_counter()
    raw = predict_image(predictor, rgb, overlap=overlap, grid=args.grid,
                        shared_noise=args.shared_noise, key=jax.random.fold_in(key, i),
                        progress=not args.no_progress, desc=Path(path).name)
    secs = time.perf_counter() - t0
    if to_rgb:
      png = out / f"{stem}.png"
      images.write_png(png, np.clip(np.asarray(raw) * 255.0 + 0.5, 0, 255).astype(np.uint8))
      images.write_tiff16(out / f"{stem}_srgb16.tif", np.asarray(raw))
      print(f"{path} -> {png} ({rgb.shape[1]}x{rgb.shape[0]}, {secs:.1f} s)", flush=True)
      continue
    try:
      paths = write_outputs(out, stem, raw, protocol, profile)
    except (OSError, ValueError) as e:
      _err("reconstruct", f"{path}: {e}")
      failed += 1
      continue
    print(f"{path} -> {paths['dng']} ({rgb.shape[1]}x{rgb.shape[0]}, {secs:.1f} s; camera: "
          f"{profile.get('camera', 'default profile')})", flush=True)
  return 1 if failed else 0
