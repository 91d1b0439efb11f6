"""Virtual-camera training pairs made on the fly, and the source that mixes them with shards.

Camera diversity for sRGB -> RAW training: every example is a new camera. One example:

  1. a camera drawn from UPI's random camera, extended (`random_camera`): the colour matrix
     a random convex mix of UPI's four real cameras' (and, when mixing with prepared data,
     of the training cameras' own), jittered; white balance from wider ranges than UPI's;
     UPI's shot/read noise; bit depth 10/12/14; a real camera's black level; a white level
     at or below 2^bits - 1; an exposure scale; one of the four Bayer layouts;
  2. a window of a bundled photo (scikit-image's, as jisp.data.virtual_camera), at a random
     scale, flip and quarter turn, unprocessed (UPI) into linear camera RGB with that
     camera, exposed, mosaicked, given noise and quantised to codes above the black level:
     a `raw_io.Capture` like a real file's;
  3. the pair exactly as for a real file (`pair_of`, equal to `pairs.make_pair(capture,
     render, protocol)`: the RAW target by the same steps, compiled, and a real JPEG at the
     protocol's quality and subsampling),
     with the render made the way `raw_io.render_srgb` has LibRaw make it (`render_srgb`:
     camera white balance, camera -> sRGB matrix, LibRaw's BT.709 gamma curve, no
     auto-brightness), so real and virtual pairs agree in tone;
  4. the patch is cut from the pair at a random even offset (JPEG block phase varies).

`render_srgb` follows LibRaw's steps (black subtraction, its data-maximum adjustment, white
balance gains normalised to the smallest, clip, demosaic, matrix, clip, gamma curve, 8-bit
by truncation) and differs from it in one step: the demosaic, Malvar-He-Cutler's
gradient-corrected linear filter where LibRaw runs AHD. With LibRaw's own linear demosaic
instead of AHD the two renders agree to one code value (README "Virtual pairs" has the
measured PSNR against AHD). `render="libraw"` renders through LibRaw itself (a temporary
DNG per example; exact, and much slower).

`VirtualPairSource` is an indexed source (jisp.data.indexed_source): example i of global
batch n is a pure function of (seed, split, n, i), so resuming is exact and process shares
partition the global batch. `MixedSource` concatenates, per batch, a fixed number of real
patches (a ShardSource) and virtual ones; its state is both positions.
"""
from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jisp.core.camera import (PROTOCOL_GAMMA, SRGB_TO_XYZ, XYZ_TO_SRGB, CameraProfile,
                              camera_features)
from jisp.core.errors import ConfigError
from jisp.core.images import jpeg_roundtrip
from jisp.data import pairs, raw_io, virtual_camera
from jisp.data.indexed_source import IndexedBatchSource
from jisp.data.raw_io import Capture, rgb_cam_from_color_matrix
from jisp.isp import bayer, tone
from jisp.isp import unprocess as up

_SPLIT_IDS = {"train": 0, "test": 1, "eval": 1}
_STREAM = 0x7669  # keeps these draws apart from other sources' for the same seed
RENDERS = ("mhc", "libraw")
MATRIX_POOLS = ("upi", "upi+data")

# The camera draw's ranges. UPI's own: the four cameras' matrices, its noise model. Widened
# (jisp's choice, to cover daylight to tungsten and the shared real files): white balance,
# and the capture's levels, bit depth and exposure, which UPI does not vary.
RED_GAIN_RANGE = (1.5, 2.8)
BLUE_GAIN_RANGE = (1.2, 2.4)
MATRIX_JITTER = 0.05          # relative std of each XYZ -> camera entry
BIT_DEPTHS = (10, 12, 14)
BLACK_LEVELS_12BIT = (0, 64, 128, 256, 512)   # scaled by 2^(bits - 12)
WHITE_FRACTION = (0.85, 1.0)  # half the cameras clip below 2^bits - 1 (e.g. 15000 / 16383)
EXPOSURE_RANGE = (0.5, 1.5)   # log-uniform scale of the linear signal (> 1 clips more)
SCALE_RANGE = (0.5, 2.0)      # log-uniform photo scale (< 1 denser detail, > 1 smoother)
MARGIN = 8                    # extra pixels each side of a patch: demosaic, JPEG phase

PIX_GAMMA = tone.RENDER_GAMMA  # raw_io.render_srgb's LibRaw gamma


# --------------------------------------------------------------------------- camera

def _rows_to_one(rgb2cam: np.ndarray) -> np.ndarray:
  return rgb2cam / rgb2cam.sum(axis=1, keepdims=True)


def upi_matrices() -> np.ndarray:
  """(4, 3, 3) sRGB -> camera matrices (rows sum to 1) of UPI's four cameras."""
  return np.stack([_rows_to_one(m @ SRGB_TO_XYZ) for m in up.XYZ2CAMS])


def profile_matrix(profile: CameraProfile) -> np.ndarray:
  """A camera profile's sRGB -> camera matrix, rows summing to 1 (for the matrix pool)."""
  return _rows_to_one(np.linalg.inv(profile.cam2rgb()))


@dataclasses.dataclass(frozen=True)
class VirtualCamera:
  """One drawn camera and capture setting (numpy; float64 matrices)."""
  rgb2cam: np.ndarray     # (3, 3) linear sRGB -> camera RGB, rows sum to 1
  wb: np.ndarray          # (3,) white-balance gains R, 1, B
  shot_noise: float
  read_noise: float
  bits: int
  black: int
  white: int
  pattern: str
  exposure: float

  @property
  def color_matrix(self) -> np.ndarray:
    """XYZ -> camera (a DNG's ColorMatrix under D65)."""
    return self.rgb2cam @ XYZ_TO_SRGB


def random_camera(rng: np.random.Generator, pool: np.ndarray) -> VirtualCamera:
  """A camera from `pool` ((K, 3, 3) sRGB -> camera matrices) and the ranges above."""
  w = rng.uniform(1e-8, 1.0, size=len(pool))
  m = np.einsum("k,kij->ij", w / w.sum(), pool)
  m = m * (1.0 + MATRIX_JITTER * rng.standard_normal((3, 3)))
  m = _rows_to_one(m)
  if not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-3:
    m = pool[int(rng.integers(len(pool)))]  # a degenerate jitter: keep a pool camera
  wb = np.array([rng.uniform(*RED_GAIN_RANGE), 1.0, rng.uniform(*BLUE_GAIN_RANGE)])
  lo, hi = np.log(up.SHOT_NOISE_RANGE[0]), np.log(up.SHOT_NOISE_RANGE[1])
  log_shot = rng.uniform(lo, hi)
  log_read = (up.READ_NOISE_SLOPE * log_shot + up.READ_NOISE_INTERCEPT
              + up.READ_NOISE_STD * rng.standard_normal())
  bits = int(rng.choice(BIT_DEPTHS))
  top = 2 ** bits - 1
  black = int(round(BLACK_LEVELS_12BIT[int(rng.integers(len(BLACK_LEVELS_12BIT)))]
                    * 2.0 ** (bits - 12)))
  white = top if rng.random() < 0.5 else int(round(rng.uniform(*WHITE_FRACTION) * top))
  white = max(white, black + 2 ** (bits - 2))
  pattern = bayer.PATTERNS[int(rng.integers(len(bayer.PATTERNS)))]
  exposure = float(np.exp(rng.uniform(*np.log(EXPOSURE_RANGE))))
  return VirtualCamera(rgb2cam=m, wb=wb, shot_noise=float(np.exp(log_shot)),
                       read_noise=float(np.exp(log_read)), bits=bits, black=black,
                       white=white, pattern=pattern, exposure=exposure)


# --------------------------------------------------------------------------- render

def gamma_table(power: float, slope: float) -> np.ndarray:
  """LibRaw's (dcraw's) gamma curve as a 16-bit table (jisp.isp.tone.libraw_curve_constants:
  a power law with a linear toe of the given slope, value and slope continuous)."""
  g0, g1, g3, g4 = tone.libraw_curve_constants(power, slope)
  r = np.arange(0x10000, dtype=np.float64) / 0x10000
  curve = np.where(r < g3, r * g1, r ** g0 * (1 + g4) - g4)
  return np.minimum(np.floor(0x10000 * curve), 0xFFFF).astype(np.int64)


_CURVE = gamma_table(*PIX_GAMMA)


@functools.partial(jax.jit, static_argnums=1)
def _demosaic(mosaic, pattern):
  return bayer.demosaic_bilinear(mosaic, pattern)

# Malvar, He & Cutler (ICASSP 2004) gradient-corrected bilinear kernels, x 1/8.
_MHC_G = np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1],
                   [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], np.float64) / 8
_MHC_ROW = np.array([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1],
                     [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]], np.float64) / 8
_MHC_DIAG = np.array([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5],
                      [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]], np.float64) / 8


def _correlate5(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """5x5 correlation with mirror padding (no edge repeat), only the non-zero taps."""
  h, w = x.shape
  p = np.pad(x, 2, mode="reflect")
  out = np.zeros_like(x)
  for dy, dx in zip(*np.nonzero(k)):
    out += k[dy, dx] * p[dy:dy + h, dx:dx + w]
  return out


def demosaic_mhc(mosaic: np.ndarray, pattern: str) -> np.ndarray:
  """(H, W) -> (H, W, 3) float64, Malvar-He-Cutler; sites keep their own value."""
  x = np.asarray(mosaic, np.float64)
  h, w = x.shape
  idx = bayer.channel_index(pattern)
  ch = np.tile(idx, (h // 2, w // 2))
  red_row = np.tile(np.repeat((idx == 0).any(axis=1)[:, None], 2, axis=1), (h // 2, w // 2))
  g_at_rb = _correlate5(x, _MHC_G)
  along_row = _correlate5(x, _MHC_ROW)
  along_col = _correlate5(x, _MHC_ROW.T)
  across = _correlate5(x, _MHC_DIAG)
  green_site = ch == 1
  r = np.where(ch == 0, x, np.where(green_site, np.where(red_row, along_row, along_col),
                                    across))
  b = np.where(ch == 2, x, np.where(green_site, np.where(red_row, along_col, along_row),
                                    across))
  g = np.where(green_site, x, g_at_rb)
  return np.stack([r, g, b], axis=-1)


def render_srgb(cap: Capture, demosaic: str = "mhc") -> np.ndarray:
  """uint8 (H, W, 3): LibRaw's render of `cap` with raw_io.render_srgb's settings, in
  numpy, with Malvar-He-Cutler ("mhc") or bilinear ("bilinear", LibRaw's "linear")
  instead of AHD (module docstring). Orientation 1 captures."""
  h, w = cap.mosaic.shape
  black = np.asarray(cap.black_level, np.float64).reshape(2, 2)
  x = np.maximum(cap.mosaic.astype(np.float64) - np.tile(black, (h // 2, w // 2)), 0.0)
  # LibRaw's adjust_maximum at the protocol's threshold (raw_io.ADJUST_MAXIMUM)
  maximum = raw_io.adjusted_white(float(cap.white_level) - float(black.max()), float(x.max()))
  wb = np.asarray(cap.wb, np.float64)
  gains = wb / wb.min()
  site_gain = np.tile(gains[bayer.channel_index(cap.pattern)], (h // 2, w // 2))
  scaled = np.minimum(np.floor(x * site_gain * (65535.0 / maximum)), 65535.0)
  if demosaic == "mhc":
    rgb = demosaic_mhc(scaled, cap.pattern)
  elif demosaic == "bilinear":
    rgb = np.asarray(_demosaic(scaled.astype(np.float32), cap.pattern), np.float64)
  else:
    raise ValueError(f"demosaic must be 'mhc' or 'bilinear', got {demosaic!r}")
  rgb = np.clip(rgb, 0.0, 65535.0)
  out = np.clip(np.floor(rgb @ np.asarray(cap.rgb_cam, np.float64).T), 0, 65535)
  return (_CURVE[out.astype(np.int64)] >> 8).astype(np.uint8)


def render_libraw(cap: Capture, colour_matrix) -> np.ndarray:
  """LibRaw's own render (raw_io.render_srgb) of `cap`, through a temporary DNG."""
  from jisp.core import dng
  from jisp.data import raw_io
  with tempfile.TemporaryDirectory(prefix="jisp-virtual-") as d:
    path = Path(d) / "virtual.dng"
    dng.write_dng(path, cap.mosaic, cap.pattern, np.asarray(cap.black_level), cap.white_level,
                  1.0 / np.asarray(cap.wb, np.float64), colour_matrix, orientation=1,
                  make="jisp", model="virtual camera")
    return raw_io.render_srgb(dataclasses.replace(cap, path=str(path)))


# --------------------------------------------------------------------------- capture

@jax.jit
def _expose(scenes, rgb2cam, wb, exposure, cfa, shot, read, z):
  """Batched: sRGB windows -> linear camera RGB (UPI) -> exposed -> noisy mosaic in [0, 1]
  units (unclipped; quantisation clips). z: standard normal noise draws."""
  def one(img, m, g, e, mask, s, r, zz):
    cam = up.CameraParams(rgb2cam=m, cam2rgb=jnp.linalg.inv(m), wb_gains=g,
                          shot_noise=s, read_noise=r)
    lin = up.unprocess(img, cam) * e
    clean = jnp.clip(jnp.sum(lin * mask, axis=-1), 0.0, 1.0)
    return clean + jnp.sqrt(jnp.maximum(s * clean + r, 0.0)) * zz
  return jax.vmap(one)(scenes, rgb2cam, wb, exposure, cfa, shot, read, z)


def _window(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A (size, size, 3) float32 window of a uint8 `photo` at a random scale, position, flip
  and quarter turn (Pillow's bilinear resize, antialiased when shrinking)."""
  h, w = photo.shape[:2]
  scale = float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
  span = min(int(np.ceil(size / scale)), h, w)
  y0 = int(rng.integers(0, h - span + 1))
  x0 = int(rng.integers(0, w - span + 1))
  win = photo[y0:y0 + span, x0:x0 + span]
  if span != size:
    from PIL import Image
    win = np.asarray(Image.fromarray(win).resize((size, size), Image.BILINEAR))
  if rng.random() < 0.5:
    win = win[:, ::-1]
  win = np.rot90(win, int(rng.integers(4)))
  return np.ascontiguousarray(win, np.float32) / 255.0


def capture_of(cam: VirtualCamera, mosaic01: np.ndarray, name: str) -> Capture:
  """The raw_io.Capture of a noisy mosaic in [0, 1] units, quantised for `cam`."""
  codes = np.clip(np.round(cam.black + mosaic01 * (cam.white - cam.black)), cam.black,
                  cam.white).astype(np.uint16)
  cm = cam.color_matrix.astype(np.float32)
  wb = cam.wb.astype(np.float32)
  return Capture(
      path=name, mosaic=codes, pattern=cam.pattern,
      black_level=np.full(4, cam.black, np.float32), white_level=float(cam.white),
      linearization=None, camera_wb=(float(wb[0]), 1.0, float(wb[2]), 1.0),
      daylight_wb=(float(wb[0]), 1.0, float(wb[2]), 1.0), wb=wb, wb_source="camera",
      color_matrix=cm, rgb_cam=rgb_cam_from_color_matrix(cm), orientation=1,
      camera="jisp virtual camera", bits=cam.bits)


def pair_of(cap: Capture, srgb: np.ndarray, protocol: str) -> dict:
  """{'raw', 'rgb'} float32 of a capture as `pairs.make_pair` makes them (orientation 1,
  3-channel protocols), the demosaic compiled: eager jnp costs tens of ms a patch."""
  lin = np.asarray(_demosaic(pairs.normalized_mosaic(cap), cap.pattern), np.float32)
  raw = pairs.white_balance(lin, cap.wb)
  gamma = PROTOCOL_GAMMA[protocol]
  if gamma is not None:
    raw = np.asarray(tone.gamma_compress(raw, gamma), np.float32)
  rgb = jpeg_roundtrip(srgb, pairs.JPEG_QUALITY, pairs.JPEG_SUBSAMPLING)
  return {"raw": raw, "rgb": rgb.astype(np.float32) / 255.0}


# --------------------------------------------------------------------------- source

class VirtualPairSource(IndexedBatchSource):
  """Process-local batches {"rgb", "raw"} (and with camera=True "rgb2cam", "wb") of
  virtual-camera pairs; batch n is a pure function of (seed, split, n).

  Args:
    patch_size, local_batch, seed, process_index, process_count, split: as SyntheticSource.
    protocol: "invisp" or "linear" (3-channel RAW targets, as `jisp prepare` makes them).
    camera: also return each patch's camera features (jisp.core.camera.camera_features
      of the capture's profile, as evaluation computes them for a real file).
    extra_matrices: (K, 3, 3) sRGB -> camera matrices added to UPI's four in the pool
      (the training cameras', `profile_matrix`).
    render: "mhc" (in-process, `render_srgb`) or "libraw" (exact, slow).
  """

  def __init__(self, *, patch_size: int, local_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, split: str = "train",
               protocol: str = "invisp", camera: bool = False, extra_matrices=None,
               render: str = "mhc"):
    if protocol not in ("invisp", "linear"):
      raise ConfigError(f"virtual pairs are made in the invisp / linear protocols, not "
                        f"{protocol!r} (config key 'data.protocol')")
    if render not in RENDERS:
      raise ConfigError(f"bad value for config key 'data.virtual_render': {render!r} "
                        f"(expected one of {', '.join(RENDERS)})")
    if patch_size < 2 or patch_size % 2:
      raise ConfigError(f"virtual pairs need an even patch size >= 2, got {patch_size}")
    self.patch = int(patch_size)
    self.size = self.patch + 2 * MARGIN
    self.local_batch = int(local_batch)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.split_id = _SPLIT_IDS[split]
    self.protocol = protocol
    self.camera = bool(camera)
    self.render = render
    pool = [upi_matrices()]
    if extra_matrices is not None and len(extra_matrices):
      pool.append(np.asarray(extra_matrices, np.float64).reshape(-1, 3, 3))
    self.pool = np.concatenate(pool)
    self.names = virtual_camera.list_source_images()
    self._photos: dict[str, np.ndarray] = {}
    self.batches = 0

  def _photo(self, name):
    if name not in self._photos:  # uint8, exactly as shipped (load_source_image is /255)
      img = virtual_camera.load_source_image(name)
      self._photos[name] = np.round(img * 255.0).astype(np.uint8)
    return self._photos[name]

  def examples_at(self, n: int) -> list[dict]:
    """The process's examples of global batch n: dicts with the pair, capture, camera."""
    first = self.process_index * self.local_batch
    rngs = [np.random.default_rng([self.seed, _STREAM, self.split_id, n, i])
            for i in range(first, first + self.local_batch)]
    s = self.size
    cams, scenes, z = [], [], []
    for rng in rngs:
      cams.append(random_camera(rng, self.pool))
      name = self.names[int(rng.integers(len(self.names)))]
      scenes.append(_window(self._photo(name), s, rng))
      z.append(rng.standard_normal((s, s)).astype(np.float32))
    f32 = lambda v: jnp.asarray(np.asarray(v), jnp.float32)
    noisy = np.asarray(_expose(
        f32(scenes), f32([c.rgb2cam for c in cams]), f32([c.wb for c in cams]),
        f32([c.exposure for c in cams]), f32([bayer.cfa_mask(c.pattern, s, s) for c in cams]),
        f32([c.shot_noise for c in cams]), f32([c.read_noise for c in cams]), f32(z)))
    out = []
    for k, (rng, cam) in enumerate(zip(rngs, cams)):
      cap = capture_of(cam, noisy[k], f"virtual:{self.split_id}:{n}:{first + k}")
      srgb = (render_srgb(cap) if self.render == "mhc"
              else render_libraw(cap, cam.color_matrix))
      pair = pair_of(cap, srgb, self.protocol)
      oy, ox = (2 * int(v) for v in rng.integers(0, MARGIN + 1, size=2))
      crop = lambda a: a[oy:oy + self.patch, ox:ox + self.patch]
      out.append({"rgb": crop(pair["rgb"]), "raw": crop(pair["raw"]), "capture": cap,
                  "srgb": srgb, "camera": camera_features(cap.profile())})
    return out

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    ex = self.examples_at(n)
    out = {k: np.stack([e[k] for e in ex]).astype(np.float32) for k in ("rgb", "raw")}
    if self.camera:
      out.update({k: np.stack([e["camera"][k] for e in ex]) for k in ("rgb2cam", "wb")})
    return out


def libraw_agreement(examples, demosaic: str = "mhc", border: int = 0) -> list[float]:
  """PSNR (dB, 8-bit) of the in-process render of each example's capture against LibRaw's
  own render of the same capture written as a DNG (`VirtualPairSource.examples_at`
  items); `border` pixels at each edge are left out."""
  out = []
  for e in examples:
    cap = e["capture"]
    ours = render_srgb(cap, demosaic).astype(np.float64)
    ref = render_libraw(cap, cap.color_matrix).astype(np.float64)
    if border:
      ours, ref = ours[border:-border, border:-border], ref[border:-border, border:-border]
    mse = float(np.mean((ours - ref) ** 2))
    out.append(float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse))
  return out


class MixedSource:
  """Each batch: `real`'s batch (prepared shards) followed by `virtual`'s; either may be
  None (all virtual / all real). State: both sources' positions."""

  def __init__(self, real, virtual):
    if real is None and virtual is None:
      raise ValueError("MixedSource needs a real or a virtual source")
    self.real, self.virtual = real, virtual

  def next(self) -> dict[str, np.ndarray]:
    parts = [s.next() for s in (self.real, self.virtual) if s is not None]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()

  def get_state(self) -> dict:
    return {"kind": "mixed",
            "real": None if self.real is None else self.real.get_state(),
            "virtual": None if self.virtual is None else self.virtual.get_state()}

  def set_state(self, state: dict) -> None:
    for name, src in (("real", self.real), ("virtual", self.virtual)):
      if src is not None and state.get(name) is not None:
        src.set_state(state[name])

  def close(self) -> None:
    for src in (self.real, self.virtual):
      if src is not None:
        src.close()


def split_batch(local_batch: int, ratio: float) -> tuple[int, int]:
  """(real, virtual) examples per process-local batch for `data.virtual_ratio`."""
  if not 0.0 <= ratio <= 1.0:
    raise ConfigError(f"bad value for config key 'data.virtual_ratio': {ratio} (a fraction "
                      "in [0, 1])")
  virtual = int(round(ratio * local_batch))
  if 0.0 < ratio < 1.0:
    virtual = min(max(virtual, 1), local_batch - 1)  # a mix keeps both kinds
  return local_batch - virtual, virtual
