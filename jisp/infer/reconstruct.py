"""Tiled reconstruction of whole images and the files `jisp reconstruct` writes.

sRGB -> RAW tasks (io.target == "raw") write, per input:
  OUT/<stem>.dng          Bayer mosaic in the camera's layout and levels, readable by LibRaw
  OUT/<stem>_preview.png  the predicted RAW as the network sees it (white-balanced, gamma)
  OUT/<stem>_raw16.tif    the demosaiced linear camera RAW (black 0, white 65535, no white
                          balance), 16-bit: the DNG before its mosaic
RAW -> sRGB tasks (io.target == "rgb") read camera RAW files and write OUT/<stem>.png and
OUT/<stem>_srgb16.tif.

The network predicts RAW in the training protocol's space (`invisp`: white-balanced, gamma
1/2.2, [0, 1]). To make a DNG it is gamma-expanded, divided by the white balance the
protocol applied, mosaicked with the camera's Bayer layout and scaled to its [black,
white] codes. The camera profile comes from `--like REFERENCE_RAW`, else from the training
data's manifest (the camera with most files), else the documented default profile, and each
output line says which. DNGs need even sizes: an odd last row/column is dropped from the
DNG only.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jisp.core import images
from jisp.core.camera import (DEFAULT_PROFILE, DEFAULT_PROFILE_DESC, PROTOCOL_GAMMA,
                              CameraProfile, camera_features, target_gains)
from jisp.core.errors import DataError, InputError, OptionError
from jisp.core.fileio import ensure_output_dir
from jisp.infer import tiling
from jisp.isp import bayer, tone
from jisp.train import runs


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How an image is cut into patches (see jisp.infer.tiling)."""
  overlap: int = 0
  grid: bool = False
  shared_noise: bool = False

  @property
  def name(self) -> str:
    if self.grid:
      return "grid"
    return f"overlap{self.overlap}" + ("+shared" if self.shared_noise else "")

  def layout(self, shape, patch: int) -> tiling.Layout:
    return tiling.make_layout(shape[0], shape[1], patch, 0 if self.grid else self.overlap,
                              self.grid)


def make_tiling(patch: int, overlap=None, grid=False, shared_noise=False) -> Tiling:
  """The tiling of the CLI options: overlap default patch/4; the grid has none."""
  if grid:
    return Tiling(0, True, bool(shared_noise))
  ov = patch // 4 if overlap is None else int(overlap)
  if not 0 <= ov < patch:
    raise OptionError(f"--overlap must be in [0, {patch}) for {patch}x{patch} patches, "
                      f"got {ov}")
  return Tiling(ov, False, bool(shared_noise))


# --------------------------------------------------------------------------- camera profile

def camera_profile(config, like=None, default=None) -> tuple[CameraProfile, str]:
  """(profile, one-line description of where it came from); see the module docstring.
  default: the task's own default camera (Task.default_camera), else DEFAULT_PROFILE."""
  if like:
    from jisp.data import raw_io  # rawpy: only when a reference RAW is given
    try:
      cap = raw_io.read_capture(like)
    except FileNotFoundError as e:
      raise InputError(like, f"--like: {e.strerror or e}") from None
    except InputError as e:
      raise OptionError(f"--like: {e}") from None
    return cap.profile(), f"profile of {like} ({cap.camera})"
  fallback, fallback_desc = ((default, f"{default.camera} (the method's default camera)")
                             if default is not None else (DEFAULT_PROFILE, DEFAULT_PROFILE_DESC))
  data_dir = str(config.data.get("dir", "") or "") if "data" in config else ""
  if not data_dir:
    return fallback, fallback_desc
  try:
    found = runs.manifest_camera(data_dir, str(config.data.get("camera", "") or ""))
  except DataError as e:
    return fallback, f"{fallback_desc}; the training data is unusable: {e}"
  if found is None:
    return fallback, f"{fallback_desc}; {data_dir} lists no camera"
  prof, name = found
  return _complete(prof), f"training camera {name} ({data_dir}/manifest.json)"


def _complete(prof: CameraProfile) -> CameraProfile:
  """A DNG needs a colour matrix: the default's when the camera's is unknown."""
  if prof.color_matrix is None:
    return dataclasses.replace(prof, color_matrix=DEFAULT_PROFILE.color_matrix)
  return prof


def data_protocol(config) -> str:
  """The RAW space the run predicts in: the training manifest's protocol, else the config's."""
  protocol = config.data.get("protocol", "invisp")
  data_dir = str(config.data.get("dir", "") or "")
  if data_dir:
    from jisp.core.fileio import load_manifest
    try:
      protocol = load_manifest(data_dir).get("protocol", protocol)
    except DataError:
      pass
  return protocol


# --------------------------------------------------------------------------- RAW space

def _check_protocol(protocol: str):
  if protocol not in PROTOCOL_GAMMA:
    raise OptionError(f"protocol {protocol!r} cannot be turned into a DNG (supported: "
                      f"{', '.join(PROTOCOL_GAMMA)})")
  return PROTOCOL_GAMMA[protocol]


def to_camera_linear(raw, protocol: str, wb) -> np.ndarray:
  """Predicted RAW (protocol space) -> linear camera RGB in [0, 1]: undo gamma, then the
  white balance the protocol applied (jisp.core.camera.target_gains of the camera's wb)."""
  g = _check_protocol(protocol)
  x = np.asarray(raw, np.float32)
  if g is not None:
    x = np.asarray(tone.gamma_expand(np.clip(x, 0, 1), g), np.float32)
  return np.clip(x / target_gains(wb).reshape(1, 1, 3), 0.0, 1.0)


def preview(raw, protocol: str) -> np.ndarray:
  """Displayable version of a protocol-space RAW (gamma applied where the space is linear)."""
  g = _check_protocol(protocol)
  x = np.clip(np.asarray(raw, np.float32), 0, 1)
  return x if g is not None else np.asarray(tone.gamma_compress(x, 2.2), np.float32)


def mosaic_codes(linear_cam, profile: CameraProfile) -> np.ndarray:
  """(H, W, 3) linear camera RGB in [0, 1] -> uint16 Bayer codes in [black, white]
  (per CFA site black level), cropped to even H, W."""
  x = np.asarray(linear_cam, np.float32)
  h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  if h < 2 or w < 2:
    raise InputError("image", f"{x.shape[1]}x{x.shape[0]} is too small for a Bayer mosaic")
  x = x[:h, :w]
  m = np.sum(x * bayer.cfa_mask(profile.pattern, h, w), axis=-1)
  black = np.tile(np.asarray(profile.black_level, np.float64).reshape(2, 2),
                  (h // 2, w // 2))
  codes = black + m.astype(np.float64) * (float(profile.white_level) - black)
  return np.clip(np.round(codes), 0, 65535).astype(np.uint16)


def write_raw_outputs(out_dir, stem: str, raw, protocol: str, profile: CameraProfile) -> dict:
  """Writes the DNG, preview PNG and 16-bit TIFF of one RAW prediction; returns paths."""
  from jisp.core import dng
  out_dir = Path(out_dir)
  lin = to_camera_linear(raw, protocol, profile.wb)
  codes = mosaic_codes(lin, profile)
  paths = {"dng": out_dir / f"{stem}.dng", "preview": out_dir / f"{stem}_preview.png",
           "raw16": out_dir / f"{stem}_raw16.tif"}
  dng.write_dng(paths["dng"], codes, profile.pattern, profile.black_level,
                profile.white_level, dng.neutral_from_wb(profile.wb),
                profile.color_matrix, orientation=1, make="jisp",
                model=str(profile.camera or "reconstruction"))
  images.write_png(paths["preview"], preview(raw, protocol))
  images.write_tiff16(paths["raw16"], lin)
  return {k: str(v) for k, v in paths.items()}


def write_rgb_outputs(out_dir, stem: str, rgb) -> dict:
  """Writes the 8-bit PNG and 16-bit TIFF of one sRGB prediction; returns paths."""
  out_dir = Path(out_dir)
  paths = {"png": out_dir / f"{stem}.png", "srgb16": out_dir / f"{stem}_srgb16.tif"}
  images.write_png(paths["png"], rgb)
  images.write_tiff16(paths["srgb16"], rgb)
  return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- prediction

def read_input(path, source: str, protocol: str) -> np.ndarray:
  """The task's input image: an sRGB file, or a camera RAW file in the training protocol."""
  if source == "rgb":
    return images.read_image(path)[0]
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(path)
  return np.asarray(pairs.make_pair(cap, raw_io.render_srgb(cap), protocol)["raw"], np.float32)


def predict_image(predictor, img, tile: Tiling, *, key, progress: bool = False,
                  desc: str = "", camera=None) -> np.ndarray:
  """Tiled prediction of one (H, W, C) image -> (H, W, C_out) in [0, 1]; camera: the
  target camera's features for tasks that take it (io.camera)."""
  layout = tile.layout(img.shape, predictor.patch)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(layout), desc=desc or "tiles", unit="patch", file=sys.stderr,
               leave=False)
  try:
    fn = lambda p, z: predictor(p, z, key, progress=bar.update if bar else None,
                                camera=camera)
    return tiling.reconstruct(img, fn, layout, key=jax.random.fold_in(key, 1 << 20),
                              noise_channels=predictor.io.noise_channels,
                              shared_noise=tile.shared_noise)
  finally:
    if bar is not None:
      bar.close()


def unique_stems(inputs) -> list[str]:
  """Output stems, a.jpg and a.png must not overwrite each other."""
  seen, out = set(), []
  for p in inputs:
    stem = Path(p).stem
    s, k = stem, 1
    while s in seen:
      k += 1
      s = f"{stem}_{k}"
    seen.add(s)
    out.append(s)
  return out


def reconstruct_files(run, predictor, inputs, out_dir, tile: Tiling, *, profile, protocol,
                      seed: int = 0, progress: bool = False, log=print, warn=None) -> int:
  """Reconstructs every input into out_dir; returns the number of inputs that failed (each
  failure is reported through `warn` as one line, the others still run)."""
  warn = warn or (lambda m: print(m, file=sys.stderr))
  out = ensure_output_dir(out_dir)
  key = jax.random.PRNGKey(seed)
  source, target = predictor.io.source, predictor.io.target
  camera = camera_features(profile) if (predictor.io.camera and profile is not None) else None
  failed = 0
  for i, (path, stem) in enumerate(zip(inputs, unique_stems(inputs))):
    try:
      img = read_input(path, source, protocol)
    except (InputError, OSError) as e:
      warn(" ".join(str(e).split()) if isinstance(e, InputError) else f"{path}: {e}")
      failed += 1
      continue
    # Compile outside the timing (once per chunk size; later images reuse it).
    predictor.warm(len(tile.layout(img.shape, predictor.patch)), camera)
    t0 = time.perf_counter()
    pred = predict_image(predictor, img, tile, key=jax.random.fold_in(key, i),
                         progress=progress, desc=Path(path).name, camera=camera)
    secs = time.perf_counter() - t0
    try:
      if target == "rgb":
        paths = write_rgb_outputs(out, stem, pred)
        written = paths["png"]
      else:
        paths = write_raw_outputs(out, stem, pred, protocol, profile)
        written = paths["dng"]
    except (OSError, ValueError, InputError) as e:
      warn(f"{path}: {' '.join(str(e).split())}")
      failed += 1
      continue
    where = "" if target == "rgb" else f"; camera: {profile.camera or 'default profile'}"
    log(f"{path} -> {written} ({img.shape[1]}x{img.shape[0]}, {secs:.1f} s{where})")
  return failed
