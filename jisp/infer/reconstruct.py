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
data's manifest (the camera with most files), else the method's or the documented default
profile, and each output line says which. DNGs need even sizes: an odd last row/column is
dropped from the DNG only; an image with a side under jisp.core.dng.MIN_SIDE is refused
before any sampling.

What the DNG says about itself: the input photo's EXIF (jisp.core.exif: capture time,
exposure, lens, GPS, artist, copyright; its make/model name the DNG's source), the input's
name as OriginalRawFileName, Software and ProfileName naming jisp, the run (or method) and
the sampler, an IFD0 preview of the input sRGB, ColorMatrix1 under D65 (the profile's:
LibRaw's D65 matrix of the camera or a reference DNG's D65 ColorMatrix) and
BaselineExposure 0 (the mosaic is scaled so that the plain rendering, with no exposure
offset, reproduces the photo). The profile carries no ForwardMatrix, so none is written
(readers derive one from ColorMatrix1, as the DNG specification says).

Big photos. `predict_image` cuts, predicts and merges one compiled chunk of patches at a
time, so besides the image and its merge buffer only one chunk (at most --max-batch
patches) is in memory. The merge accumulates in a fixed patch order, so the result does not
depend on where a run stopped. Resume: each image's finished chunks are saved
(`TileStore`, OUT/.<stem>.tiles/) every few seconds of sampling and when it is
interrupted, with a fingerprint of everything that decides them (run, parameters, options,
tiling, seed, input file, devices); a re-run with the same fingerprint reuses them and
continues, one with another starts over. The folder is removed once the image's outputs
are written (each atomically).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core import images
from jisp.core.camera import (DEFAULT_PROFILE, DEFAULT_PROFILE_DESC, PROTOCOL_GAMMA,
                              CameraProfile, camera_features, target_gains)
from jisp.core.errors import DataError, InputError, OptionError
from jisp.core.fileio import atomic_path, ensure_output_dir
from jisp.infer import tiling
from jisp.infer.tilestore import SAVE_SECONDS, TileStore, fingerprint, params_digest
from jisp.train import runs

# Rows converted to DNG codes at a time (even: keeps the CFA phase of every block).
_ROW_BLOCK = 512


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

  def layout(self, shape, patch: int, align: int = 1) -> tiling.Layout:
    """align: the predictor's output scale (io.out_scale); positions stay multiples of it."""
    ov = 0 if self.grid else self.overlap
    if align > 1:
      return tiling.make_layout(shape[0], shape[1], patch, ov, self.grid, align=align)
    return tiling.make_layout(shape[0], shape[1], patch, ov, self.grid)


def make_tiling(patch: int, overlap=None, grid=False, shared_noise=False) -> Tiling:
  """The tiling of the CLI options: overlap default patch/4; the grid has none."""
  if grid:
    return Tiling(0, True, bool(shared_noise))
  ov = patch // 4 if overlap is None else int(overlap)
  if not 0 <= ov < patch:
    raise OptionError(f"--overlap must be in [0, {patch}) for {patch}x{patch} patches, "
                      f"got {ov}")
  return Tiling(ov, False, bool(shared_noise))


def out_scale(io) -> int:
  """The task's output scale (IOSpec.out_scale; 1 where the spec has none)."""
  return int(getattr(io, "out_scale", 1))


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
    return with_color_matrix(cap.profile()), f"profile of {like} ({cap.camera})"
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
  return with_color_matrix(prof), f"training camera {name} ({data_dir}/manifest.json)"


def with_color_matrix(prof: CameraProfile) -> CameraProfile:
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


def run_description(run, predictor) -> str:
  """'ddpm run NAME step 600, ddim (20 NFE, eta=1.0)' / 'method upi, one deterministic
  pass': what made a reconstruction, for the DNG's Software/ProfileName and the CLI."""
  what = (f"{run.task.name} run {Path(run.workdir).name} step {run.step}" if run.workdir
          else f"method {run.task.name}")
  return f"{what}, {predictor.describe()}"


# --------------------------------------------------------------------------- RAW space

def _check_protocol(protocol: str):
  if protocol not in PROTOCOL_GAMMA:
    raise OptionError(f"protocol {protocol!r} cannot be turned into a DNG (supported: "
                      f"{', '.join(PROTOCOL_GAMMA)})")
  return PROTOCOL_GAMMA[protocol]


def to_camera_linear(raw, protocol: str, wb) -> np.ndarray:
  """Predicted RAW (protocol space) -> linear camera RGB in [0, 1]: undo gamma, then the
  white balance the protocol applied (jisp.core.camera.target_gains of the camera's wb).

  numpy rather than jisp.isp.tone (the same max(x, 1e-8) ** gamma): an element's value
  must not depend on the block it is converted in (`raw_to_codes` works in row blocks)."""
  g = _check_protocol(protocol)
  x = np.clip(np.asarray(raw, np.float32), 0.0, 1.0)
  if g is not None:
    x = np.power(np.maximum(x, np.float32(1e-8)), np.float32(g), dtype=np.float32)
  x /= target_gains(wb).reshape(1, 1, 3)
  return np.clip(x, 0.0, 1.0, out=x)


def preview(raw, protocol: str) -> np.ndarray:
  """Displayable version of a protocol-space RAW (gamma applied where the space is linear)."""
  from jisp.isp import tone
  g = _check_protocol(protocol)
  x = np.clip(np.asarray(raw, np.float32), 0, 1)
  return x if g is not None else np.asarray(tone.gamma_compress(x, 2.2), np.float32)


def _site_codes(plane, black: float, white: float) -> np.ndarray:
  codes = black + plane.astype(np.float64) * (white - black)
  return np.clip(np.round(codes), 0, 65535).astype(np.uint16)


def mosaic_codes(linear_cam, profile: CameraProfile) -> np.ndarray:
  """(H, W, 3) linear camera RGB in [0, 1] -> uint16 Bayer codes in [black, white]
  (per CFA site black level), cropped to even H, W."""
  x = np.asarray(linear_cam, np.float32)
  h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  if h < 2 or w < 2:
    raise InputError("image", f"{x.shape[1]}x{x.shape[0]} is too small for a Bayer mosaic")
  out = np.empty((h, w), np.uint16)
  black = np.asarray(profile.black_level, np.float64).reshape(-1)
  black = np.broadcast_to(black, (4,)) if black.size == 1 else black
  channel = {"R": 0, "G": 1, "B": 2}
  for k, c in enumerate(profile.pattern.upper()):
    dy, dx = divmod(k, 2)
    out[dy::2, dx::2] = _site_codes(x[dy:h:2, dx:w:2, channel[c]], float(black[k]),
                                    float(profile.white_level))
  return out


def raw_to_codes(raw, protocol: str, profile: CameraProfile, orientation: int = 1,
                 linear_out=None) -> np.ndarray:
  """An upright protocol-space RAW (H, W, 3) -> the uint16 DNG mosaic in the stored order
  that EXIF `orientation` turns upright (jisp.infer.look.sensor_order), even-cropped,
  converted in row blocks (memory: one block besides the output). linear_out: an optional
  uint16 (H, W, 3) array (the stored order) whose even-cropped part receives the linear
  camera RGB (the _raw16.tif image)."""
  from jisp.infer.look import sensor_order
  x = sensor_order(np.asarray(raw), orientation) if int(orientation) != 1 else np.asarray(raw)
  h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  if h < 2 or w < 2:
    raise InputError("image", f"{x.shape[1]}x{x.shape[0]} is too small for a Bayer mosaic")
  out = np.empty((h, w), np.uint16)
  for y in range(0, h, _ROW_BLOCK):
    lin = to_camera_linear(x[y:min(y + _ROW_BLOCK, h), :w], protocol, profile.wb)
    out[y:y + lin.shape[0]] = mosaic_codes(lin, profile)
    if linear_out is not None:
      linear_out[y:y + lin.shape[0], :w] = images.to_uint16(lin)
  return out


def _to_uint8(img, fn=None) -> np.ndarray:
  """images.to_uint8(fn(img)) in row blocks (a 24-MP float image would need three float
  copies at once); fn: a per-pixel map applied first."""
  a = np.asarray(img)
  if a.dtype == np.uint8 and fn is None:
    return a
  out = np.empty(a.shape, np.uint8)
  for y in range(0, a.shape[0], _ROW_BLOCK):
    block = a[y:y + _ROW_BLOCK]
    out[y:y + _ROW_BLOCK] = images.to_uint8(block if fn is None else fn(block))
  return out


def _write_png_fast(path, img8) -> None:
  """An 8-bit PNG as images.write_png writes it but at zlib level 1: the full-size preview
  of a big photo encodes several times faster for about the same size (README)."""
  from PIL import Image
  with atomic_path(path) as tmp:
    Image.fromarray(np.ascontiguousarray(img8)).save(tmp, format="PNG", compress_level=1)


def _write_tiff16(path, img16) -> None:
  """images.write_tiff16's file from a uint16 image, streamed to its temp file."""
  import tifffile
  with atomic_path(path) as tmp:
    tifffile.imwrite(tmp, img16, photometric="rgb", metadata=None)


def _ascii(s: str) -> str:
  return s.encode("ascii", "replace").decode()


def write_raw_outputs(out_dir, stem: str, raw, protocol: str, profile: CameraProfile, *,
                      metadata=None, source_rgb=None, description: str | None = None) -> dict:
  """Writes the DNG, preview PNG and 16-bit TIFF of one RAW prediction (each atomically,
  the DNG last); returns their paths.

  metadata: the input photo's jisp.core.exif.PhotoMetadata (EXIF/GPS, OriginalRawFileName).
  source_rgb: the input sRGB (upright (H, W, 3)), stored as the DNG's preview.
  description: what made it (run_description), for Software and ProfileName.
  """
  from jisp import __version__
  from jisp.core import dng
  out_dir = Path(out_dir)
  x = np.asarray(raw)
  paths = {"dng": out_dir / f"{stem}.dng", "preview": out_dir / f"{stem}_preview.png",
           "raw16": out_dir / f"{stem}_raw16.tif"}
  lin16 = np.empty((x.shape[0], x.shape[1], 3), np.uint16)
  codes = raw_to_codes(x, protocol, profile, 1, linear_out=lin16)
  if lin16.shape[:2] != codes.shape:  # odd sizes: the TIFF keeps the last row/column
    lin16[codes.shape[0]:] = images.to_uint16(
        to_camera_linear(x[codes.shape[0]:], protocol, profile.wb))
    lin16[:, codes.shape[1]:] = images.to_uint16(
        to_camera_linear(x[:, codes.shape[1]:], protocol, profile.wb))
  _write_png_fast(paths["preview"], _to_uint8(x, lambda b: preview(b, protocol)))
  _write_tiff16(paths["raw16"], lin16)
  del lin16
  desc = f" ({description})" if description else ""
  camera = profile.camera or "default profile"
  camera = camera if camera.lower().startswith("jisp") else f"jisp {camera}"
  dng.write_dng(
      paths["dng"], codes, profile.pattern, profile.black_level, profile.white_level,
      dng.neutral_from_wb(profile.wb), profile.color_matrix, orientation=1,
      metadata=metadata, profile_camera=profile.camera or "",
      preview=None if source_rgb is None else _to_uint8(dng.even_crop(source_rgb)),
      software=_ascii(f"jisp {__version__}{desc}"),
      profile_name=f"{camera}{desc}", baseline_exposure=0.0)
  return {k: str(v) for k, v in paths.items()}


def write_rgb_outputs(out_dir, stem: str, rgb) -> dict:
  """Writes the 8-bit PNG and 16-bit TIFF of one sRGB prediction; returns paths."""
  out_dir = Path(out_dir)
  paths = {"png": out_dir / f"{stem}.png", "srgb16": out_dir / f"{stem}_srgb16.tif"}
  images.write_png(paths["png"], _to_uint8(rgb))
  images.write_tiff16(paths["srgb16"], rgb)
  return {k: str(v) for k, v in paths.items()}


def check_dng_size(path, shape) -> None:
  """InputError (one line) when an image of `shape` is too small for a DNG."""
  from jisp.core import dng
  h, w = shape[0] // 2 * 2, shape[1] // 2 * 2
  if min(h, w) < dng.MIN_SIDE:
    raise InputError(path, f"{shape[1]}x{shape[0]} is too small for a DNG: RAW readers "
                     f"(LibRaw, dcraw) open none with a side under {dng.MIN_SIDE} pixels")


# --------------------------------------------------------------------------- prediction

def read_input(path, source: str, protocol: str) -> np.ndarray:
  """The task's input image: an sRGB file, or a camera RAW file in the training protocol."""
  if source == "rgb":
    return images.read_image(path)[0]
  from jisp.data import pairs, raw_io
  cap = raw_io.read_capture(path)
  return np.asarray(pairs.make_pair(cap, raw_io.render_srgb(cap), protocol)["raw"], np.float32)


@functools.partial(jax.jit, static_argnums=(2,))
def _patch_noise(key, index, shape):
  """Start noise of patches `index`: patch j draws from fold_in(key, j), so a patch's
  noise does not depend on how many patches there are or how they are chunked."""
  return jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), shape,
                                              jnp.float32))(index)


class _Merger:
  """tiling.merge one chunk at a time: the blend-window-weighted sum of the patches in
  layout order, normalised at the end (float32 accumulators: one image-sized buffer)."""

  def __init__(self, layout: tiling.Layout, scale: int, channels: int):
    self.layout, self.s = layout, scale
    self.q = layout.patch // scale
    self.ph, self.pw = (v // scale for v in layout.padded)
    self.win = tiling.blend_window(self.q, layout.overlap // scale)
    self.acc = np.zeros((self.ph, self.pw, channels), np.float32)
    self.positions = layout.positions

  def add(self, start: int, patches) -> None:
    q, s, win = self.q, self.s, self.win[..., None]
    for (y, x), p in zip(self.positions[start:start + len(patches)], patches):
      y, x = y // s, x // s
      self.acc[y:y + q, x:x + q] += win * p

  def result(self) -> np.ndarray:
    q, s = self.q, self.s
    wsum = np.zeros((self.ph, self.pw), np.float32)
    for y, x in self.positions:
      wsum[y // s:y // s + q, x // s:x // s + q] += self.win
    self.acc /= wsum[..., None]
    out = self.acc[:self.layout.height // s, :self.layout.width // s]
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def predict_image(predictor, img, tile: Tiling, *, key, progress: bool = False,
                  desc: str = "", camera=None, store: TileStore | None = None,
                  on_chunk=None) -> np.ndarray:
  """Tiled prediction of one (H, W, C) image -> (H/s, W/s, C_out) in [0, 1] (s the task's
  output scale, usually 1), one compiled chunk at a time (see the module doc).

  camera: the target camera's features for tasks that take it (io.camera). store: a
  TileStore (opened) whose saved chunks are reused and which receives the new ones.
  on_chunk(done, total): called after each finished chunk. Chunk i samples with
  fold_in(key, i), as PatchPredictor does over a whole batch; patch j starts from
  fold_in(noise key, j) (or, with shared noise, from its window of one noise field).
  """
  io = predictor.io
  s = out_scale(io)
  layout = tile.layout(img.shape, predictor.patch, s)
  n = len(layout)
  b = predictor.chunk_size(n)
  merger = _Merger(layout, s, io.out_channels)
  done = 0
  if store is not None:
    for start, arr in store.stored():
      merger.add(start, arr)
      done = start + len(arr)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n, initial=done, desc=desc or "tiles", unit="tile", file=sys.stderr,
               leave=False, dynamic_ncols=True)
  try:
    if done < n:
      _sample(predictor, img, layout, key, camera, tile.shared_noise, done // b, b, merger,
              store, bar, on_chunk)
  except BaseException:
    if store is not None:
      try:  # keep what was sampled; a failing save must not hide why we stopped
        store.flush()
      except OSError:
        pass
    raise
  finally:
    if bar is not None:
      bar.close()
  return merger.result()


def _sample(predictor, img, layout, key, camera, shared_noise, first, b, merger, store, bar,
            on_chunk):
  """Chunks `first`.. of b patches: dispatch chunk i+1 before fetching chunk i (host and
  devices overlap), as PatchPredictor.__call__ does."""
  io, p, n = predictor.io, predictor.patch, len(layout)
  n_chunks = -(-n // b)
  cam = predictor.camera_arg(camera)
  fn = predictor.compiled(b, bool(cam))
  padded = tiling.pad_image(img, layout)
  positions = layout.positions
  nkey = jax.random.fold_in(key, 1 << 20)
  field = None
  if predictor.noisy and shared_noise:
    ph, pw = layout.padded
    field = np.asarray(jax.random.normal(nkey, (ph, pw, io.noise_channels), jnp.float32))

  def cut(src, s, e):
    x = np.stack([src[y:y + p, xx:xx + p] for y, xx in positions[s:e]]).astype(
        np.float32, copy=False)
    return np.pad(x, ((0, b - (e - s)), (0, 0), (0, 0), (0, 0))) if e - s < b else x

  def noise(s, e):
    if field is not None:
      return cut(field, s, e)
    return np.asarray(_patch_noise(nkey, jnp.arange(s, s + b), (p, p, io.noise_channels)))

  def finish(y, i, s, e):
    out = np.asarray(y)[:e - s]
    merger.add(s, out)
    if store is not None:
      store.append(s, out)
    if bar is not None:
      bar.update(e - s)
    if on_chunk is not None:
      on_chunk(i + 1, n_chunks)

  pending = None
  for i in range(first, n_chunks):
    s, e = i * b, min((i + 1) * b, n)
    z = predictor.put(noise(s, e)) if predictor.noisy else None
    y = predictor.run(fn, predictor.put(cut(padded, s, e)), z,
                      predictor.key(jax.random.fold_in(key, i)), cam)
    if pending is not None:
      finish(*pending)
    pending = (y, i, s, e)
  if pending is not None:
    finish(*pending)


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
                      seed: int = 0, progress: bool = False, log=print, warn=None,
                      check: bool = False, resume: bool = True,
                      save_seconds: float = SAVE_SECONDS, on_chunk=None,
                      results: list | None = None) -> int:
  """Reconstructs every input into out_dir; returns the number of inputs that failed (each
  failure is reported through `warn` as one line, the others still run).

  check: render each DNG written and log the look round trip against its input
  (jisp.infer.look). resume: keep and reuse sampled chunks (TileStore) every
  `save_seconds`. on_chunk(done, total): after each chunk of each image. results: a list
  that receives one dict per written input (paths, seconds, look).
  """
  warn = warn or (lambda m: print(m, file=sys.stderr))
  out = ensure_output_dir(out_dir)
  key = jax.random.PRNGKey(seed)
  source, target = predictor.io.source, predictor.io.target
  camera = camera_features(profile) if (predictor.io.camera and profile is not None) else None
  description = run_description(run, predictor)
  params_sha = None
  failed = 0
  for i, (path, stem) in enumerate(zip(inputs, unique_stems(inputs))):
    try:
      img = read_input(path, source, protocol)
      if target == "raw":
        check_dng_size(path, img.shape)
    except (InputError, OSError) as e:
      warn(" ".join(str(e).split()) if isinstance(e, InputError) else f"{path}: {e}")
      failed += 1
      continue
    layout = tile.layout(img.shape, predictor.patch, out_scale(predictor.io))
    # Compile outside the timing (once per chunk size; later images reuse it).
    predictor.warm(len(layout), camera)
    ikey = jax.random.fold_in(key, i)
    store = None
    if resume:
      params_sha = params_sha or params_digest(run.params)
      store = TileStore(out / f".{stem}.tiles",
                        fingerprint(run, predictor, tile, layout, path, ikey, camera,
                                    params_sha=params_sha),
                        save_seconds=save_seconds)
      reused = store.open()
      if store.note:
        log(store.note)
      if reused:
        log(f"{path}: resuming with {reused} of {len(layout)} tiles from {store.folder}")
    t0 = time.perf_counter()
    try:
      pred = predict_image(predictor, img, tile, key=ikey, progress=progress,
                           desc=Path(path).name, camera=camera, store=store,
                           on_chunk=on_chunk)
    except KeyboardInterrupt:
      if store is not None and store.saved:
        log(f"{path}: interrupted; {store.saved} of {len(layout)} tiles are kept in "
             f"{store.folder}: the same command resumes from there")
      raise
    secs = time.perf_counter() - t0
    try:
      if target == "rgb":
        paths = write_rgb_outputs(out, stem, pred)
        written = paths["png"]
      else:
        paths = write_raw_outputs(out, stem, pred, protocol, profile,
                                  metadata=_metadata(path, log), source_rgb=img,
                                  description=description)
        written = paths["dng"]
    except (OSError, ValueError, InputError) as e:
      warn(f"{path}: {' '.join(str(e).split())}")
      failed += 1
      if store is not None:  # the samples are not lost with the disk
        try:
          store.flush()
        except OSError:
          pass
      continue
    if store is not None:
      store.discard()
    where = "" if target == "rgb" else f"; camera: {profile.camera or 'default profile'}"
    log(f"{path} -> {written} ({img.shape[1]}x{img.shape[0]}, {secs:.1f} s{where})")
    entry = {"input": str(path), "outputs": paths, "seconds": secs, "look": None}
    if check and target == "raw":
      from jisp.core import dng
      from jisp.infer import look
      del pred
      m = look.look_metrics(look.render_dng(paths["dng"]), dng.even_crop(img))
      entry["look"] = m
      log(f"{path}: look round trip (LibRaw rendering of {Path(written).name} vs the "
          f"input): {look.describe(m)}")
    if results is not None:
      results.append(entry)
  return failed


def _metadata(path, log):
  """The input photo's EXIF record; fields it had to leave out are logged in one line."""
  from jisp.core import exif
  try:
    meta = exif.read_photo_metadata(path)
  except InputError:
    return None
  if meta.problems:
    log(f"{path}: metadata left out: {'; '.join(meta.problems)}")
  return meta
