"""RAW / sRGB training pairs under named protocols (the name is recorded in manifests).

Every protocol starts from the same normalised mosaic: per-CFA-site black subtraction,
division by (white - black), clip to [0, 1] (the sensor's own saturation). The official
InvISP preprocessing skipped the black-level subtraction (a bug that leaves an offset in
every RAW target); we do not.

  invisp  RAW = bilinear demosaic -> white balance with `target_gains(capture.wb)` (the
          camera gains divided by their maximum, as the official InvISP code: no gain
          above 1, so nothing the sensor did not clip is clipped, and no clip is applied)
          -> gamma 1/2.2, (H, W, 3). sRGB = LibRaw render (camera WB, no
          auto-brightness) saved and re-read as a real JPEG, quality 90, 4:2:2 (PIL
          subsampling=1, as the official ground truth), /255, (H, W, 3). InvISP and the
          DDPM paper.
  linear  as invisp without the gamma: the RAW target stays linear.
  packed  RAW = the normalised mosaic packed to (H/2, W/2, 4) in R, Gr, Gb, B order (no WB,
          no gamma); sRGB = the render (no JPEG) area-downsampled 2x2 to (H/2, W/2, 3).
          The SonyResearch RAW-Diffusion protocol.
  aim     (AIM 2022 Reversed ISP style; `make_aim_pair`, not a `jisp prepare` protocol)
          RAW = the normalised mosaic packed to (H/2, W/2, 4) in R, Gr, Gb, B order, as
          `packed`; sRGB at FULL resolution (H, W, 3), the render stored and re-read as a
          real JPEG exactly as `invisp` (what SSDNet maps: a full-resolution camera JPEG to
          its half-resolution packed RAW). Odd last rows/columns are dropped so H, W are
          even. Crops must start on even sRGB pixels (jisp.data.aim.crop_pair) so every
          RAW patch starts on an R site.

PROTOCOL_VERSION numbers these definitions; prepared data records it and data of another
version is refused (jisp.data.shards.check_manifest). History:
  1  invisp/linear gains normalised to G = 1 and the target clipped to [0, 1] (clipped
     highlights the sensor had kept); sRGB JPEG 4:2:0.
  2  gains / max, no clip; sRGB JPEG 4:2:2. Manifests also record shard sizes and sha256.
  3  the sRGB render without LibRaw's adjust_maximum (raw_io.ADJUST_MAXIMUM): its
     brightness follows the file's white level, not the picture's own maximum.

Orientation: both arrays are shown upright (EXIF orientation applied by
`jisp.core.images.apply_orientation`, the same helper `render_srgb` uses). For `packed` the mosaic
itself is turned BEFORE packing and its CFA layout re-derived with `orient_pattern`
(H, W are even, so 2x2 tiles map onto 2x2 tiles and the layout stays a Bayer layout).
We chose this over packing first and turning the planes because the result is
self-describing: `bayer.unpack(raw, meta["oriented_pattern"])` is exactly the upright
mosaic, which is what a DNG writer (orientation 1) or a mosaic-space loss needs. The only
cost is that under the transposing orientations (5..8) the "Gr" plane holds the sensor's
other green; Bayer greens share one filter, so nothing is lost.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jisp.core.camera import PROTOCOL_GAMMA, PROTOCOLS, target_gains
from jisp.core.errors import OptionError
from jisp.core.images import apply_orientation, jpeg_roundtrip
from jisp.data.raw_io import Capture, orient_pattern
from jisp.isp import bayer, tone

PROTOCOL_VERSION = 3
GAMMA = PROTOCOL_GAMMA["invisp"]
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:2"
WB_NORM = "max"  # how target_gains normalises the camera gains (recorded in manifests)


AIM_PROTOCOL = "aim"


def check_protocol(protocol) -> str:
  if protocol not in PROTOCOLS:
    raise OptionError(f"unknown pair protocol {protocol!r}; expected one of {PROTOCOLS}")
  return protocol


def protocol_fields(protocol: str) -> dict:
  """What a manifest records about the protocol its pairs were made with."""
  check_protocol(protocol)
  out = {"protocol": protocol, "protocol_version": PROTOCOL_VERSION}
  if protocol != "packed":
    out.update(wb_norm=WB_NORM, gamma=PROTOCOL_GAMMA.get(protocol),
               jpeg_quality=JPEG_QUALITY, jpeg_subsampling=JPEG_SUBSAMPLING)
  return out


def crop_capture(cap: Capture, top: int, left: int, height: int, width: int) -> Capture:
  """A window of the mosaic (sensor orientation). Even offsets and sizes keep `pattern`."""
  h, w = cap.mosaic.shape
  if any(int(v) % 2 for v in (top, left, height, width)):
    raise ValueError(f"crop offsets and sizes must be even to keep the {cap.pattern} "
                     f"layout, got top={top} left={left} {height}x{width}")
  if top < 0 or left < 0 or height < 2 or width < 2 or top + height > h or left + width > w:
    raise ValueError(f"crop {height}x{width} at ({top}, {left}) is outside the "
                     f"{h}x{w} mosaic of {cap.path}")
  return dataclasses.replace(cap, mosaic=cap.mosaic[top:top + height, left:left + width])


def normalized_mosaic(cap: Capture) -> np.ndarray:
  """(H, W) float32 in [0, 1]: per-site black subtracted, divided by (white - black)."""
  black = np.asarray(cap.black_level, np.float32).reshape(2, 2)
  h, w = cap.mosaic.shape
  black = np.tile(black, (h // 2, w // 2))
  x = (cap.mosaic.astype(np.float32) - black) / (np.float32(cap.white_level) - black)
  return np.clip(x, 0.0, 1.0)


def linear_rgb(cap: Capture) -> np.ndarray:
  """(H, W, 3) float32, sensor orientation: bilinear demosaic of `normalized_mosaic`.

  This is the RAW target before white balance; on each CFA site its channel equals the
  normalised mosaic exactly (checked in the tests).
  """
  return np.asarray(bayer.demosaic_bilinear(normalized_mosaic(cap), cap.pattern), np.float32)


def white_balance(rgb, wb) -> np.ndarray:
  """rgb * target_gains(wb): gains <= 1 keep [0, 1] inputs in [0, 1] without a clip."""
  return np.asarray(rgb, np.float32) * target_gains(wb)


def raw_target(cap: Capture, protocol: str) -> np.ndarray:
  """The upright RAW side of a pair, float32 in [0, 1] (see the module docstring)."""
  check_protocol(protocol)
  if protocol == "packed":
    mos = np.ascontiguousarray(apply_orientation(normalized_mosaic(cap), cap.orientation))
    return np.asarray(bayer.pack(mos, orient_pattern(cap.pattern, cap.orientation)),
                      np.float32)
  raw = white_balance(linear_rgb(cap), cap.wb)
  if PROTOCOL_GAMMA[protocol] is not None:
    raw = np.asarray(tone.gamma_compress(raw, PROTOCOL_GAMMA[protocol]), np.float32)
  return np.ascontiguousarray(apply_orientation(raw, cap.orientation))


def area_downsample2(img) -> np.ndarray:
  """Mean over 2x2 blocks: (H, W, C) -> (H/2, W/2, C) float32 (H, W even)."""
  x = np.asarray(img, np.float32)
  h, w = x.shape[:2]
  return x.reshape(h // 2, 2, w // 2, 2, *x.shape[2:]).mean(axis=(1, 3))


def _meta(cap: Capture, protocol: str) -> dict:
  """JSON-ready description of where a pair came from (for manifests)."""
  cm = None if cap.color_matrix is None else np.asarray(cap.color_matrix).tolist()
  out = dict(protocol=protocol, protocol_version=PROTOCOL_VERSION, camera=cap.camera,
             path=cap.path, pattern=cap.pattern,
             oriented_pattern=orient_pattern(cap.pattern, cap.orientation),
             wb=[float(x) for x in cap.wb], wb_source=cap.wb_source,
             black=[float(x) for x in cap.black_level], white=float(cap.white_level),
             color_matrix=cm, orientation=int(cap.orientation), bits=int(cap.bits))
  if protocol != "packed":
    out.update(wb_norm=WB_NORM, target_gains=[float(x) for x in target_gains(cap.wb)])
  return out


def make_pair(cap: Capture, srgb_uint8, protocol: str) -> dict:
  """{'raw': float32, 'rgb': float32, 'meta': dict} for one capture under `protocol`.

  srgb_uint8: LibRaw's render of this capture, upright, i.e. `raw_io.render_srgb(cap)`
  (or the same window of it when `cap` was cropped with `crop_capture`).
  """
  check_protocol(protocol)
  srgb = np.asarray(srgb_uint8)
  upright = apply_orientation(cap.mosaic, cap.orientation).shape
  if srgb.dtype != np.uint8 or srgb.shape != upright + (3,):
    raise ValueError(f"{cap.path}: sRGB render must be uint8 {upright + (3,)} (upright, "
                     f"same size as the mosaic), got {srgb.dtype} {srgb.shape}")
  meta = _meta(cap, protocol)
  raw = raw_target(cap, protocol)
  if protocol == "packed":
    rgb = area_downsample2(srgb.astype(np.float32) / 255.0)
    meta.update(packed_order=list(bayer.PACKED_ORDER), rgb_source="render")
    return dict(raw=raw, rgb=rgb, meta=meta)
  if PROTOCOL_GAMMA[protocol] is not None:
    meta.update(gamma=PROTOCOL_GAMMA[protocol])
  rgb = jpeg_roundtrip(srgb, JPEG_QUALITY, JPEG_SUBSAMPLING).astype(np.float32) / 255.0
  meta.update(jpeg_quality=JPEG_QUALITY, jpeg_subsampling=JPEG_SUBSAMPLING,
              rgb_source="render_jpeg")
  return dict(raw=raw, rgb=rgb, meta=meta)


def _even_window(cap: Capture) -> tuple[Capture, tuple[slice, slice]]:
  """The capture cropped to even sensor H, W (keeps `pattern`), and where that window lies
  in the upright image (under a flip the dropped sensor row can be the upright first)."""
  h, w = cap.mosaic.shape
  he, we = h // 2 * 2, w // 2 * 2
  if (he, we) == (h, w):
    return cap, (slice(None), slice(None))
  idx = np.arange(h * w).reshape(h, w)
  up = apply_orientation(idx, cap.orientation)
  win = apply_orientation(idx[:he, :we], cap.orientation)
  r0, c0 = (int(v[0]) for v in np.nonzero(up == win[0, 0]))
  rows, cols = slice(r0, r0 + win.shape[0]), slice(c0, c0 + win.shape[1])
  return crop_capture(cap, 0, 0, he, we), (rows, cols)


def make_aim_pair(cap: Capture, srgb_uint8) -> dict:
  """{'raw': (H/2, W/2, 4), 'rgb': (H, W, 3) float32 in [0, 1], 'meta'} for one capture in
  the `aim` protocol (module docstring). srgb_uint8 as for `make_pair`; a capture with an
  odd sensor height or width loses its last sensor row/column (and the matching sRGB one)."""
  srgb = np.asarray(srgb_uint8)
  upright = apply_orientation(cap.mosaic, cap.orientation).shape
  if srgb.dtype != np.uint8 or srgb.shape != upright + (3,):
    raise ValueError(f"{cap.path}: sRGB render must be uint8 {upright + (3,)} (upright, "
                     f"same size as the mosaic), got {srgb.dtype} {srgb.shape}")
  cap, (rows, cols) = _even_window(cap)
  srgb = np.ascontiguousarray(srgb[rows, cols])
  raw = raw_target(cap, "packed")  # upright, packed in R, Gr, Gb, B of the upright layout
  rgb = jpeg_roundtrip(srgb, JPEG_QUALITY, JPEG_SUBSAMPLING).astype(np.float32) / 255.0
  meta = _meta(cap, AIM_PROTOCOL)
  meta.update(packed_order=list(bayer.PACKED_ORDER), rgb_source="render_jpeg",
              jpeg_quality=JPEG_QUALITY, jpeg_subsampling=JPEG_SUBSAMPLING)
  for k in ("wb_norm", "target_gains"):
    meta.pop(k, None)
  return dict(raw=raw, rgb=rgb, meta=meta)
