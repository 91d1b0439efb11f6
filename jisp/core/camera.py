"""Camera constants shared by every layer, and the camera profile a DNG is written with.

One set of colour constants: sRGB (D65) <-> XYZ as LibRaw defines them, so matrices
derived here match LibRaw's rgb_cam to float precision.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
PROTOCOLS = ("invisp", "linear", "packed")
# The tone curve of a protocol's 3-channel RAW (None: linear); `packed` has no image form.
PROTOCOL_GAMMA = {"invisp": 2.2, "linear": None}
DIRECTIONS = ("rgb2raw", "raw2rgb", "both")

# Linear sRGB (D65) -> CIE XYZ, LibRaw's constants, and its inverse.
SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], np.float64)
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)

# The camera -> sRGB matrix of jisp.data.synthetic's parametric camera (rows sum to 1).
SYNTHETIC_CAM2RGB = np.array([[1.70, -0.55, -0.15],
                              [-0.25, 1.55, -0.30],
                              [0.05, -0.60, 1.55]], np.float32)


def check_pattern(pattern) -> str:
  if not isinstance(pattern, str) or pattern.upper() not in BAYER_PATTERNS:
    raise ValueError(f"unknown Bayer pattern {pattern!r}; expected one of {BAYER_PATTERNS}")
  return pattern.upper()


@dataclasses.dataclass(frozen=True)
class CameraProfile:
  """What a DNG needs to know of its camera (and what UPI needs to unprocess for it).

  black_level: 4 values, one per CFA site in row-major 2x2 order of `pattern`.
  wb: (R, G, B) white-balance gains (G = 1). color_matrix: 3x3 XYZ -> camera (DNG
  ColorMatrix), None when unknown. rgb_cam: 3x3 camera -> linear sRGB (rows sum to 1).
  """
  pattern: str = "RGGB"
  black_level: tuple = (0.0, 0.0, 0.0, 0.0)
  white_level: float = 4095.0
  wb: tuple = (1.0, 1.0, 1.0)
  color_matrix: Any = None
  rgb_cam: Any = None
  bits: int = 12
  camera: str = ""

  @classmethod
  def from_dict(cls, d: dict, camera: str | None = None) -> "CameraProfile":
    """From a manifest `cameras` entry or a stored profile; missing fields get defaults."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields and v is not None}
    if camera is not None:
      kw["camera"] = camera
    if "black_level" in kw:
      black = np.asarray(kw["black_level"], np.float64).reshape(-1)
      kw["black_level"] = tuple(float(b) for b in np.broadcast_to(black, (4,))) \
          if black.size in (1, 4) else tuple(float(b) for b in black)
    for k in ("wb",):
      if k in kw:
        kw[k] = tuple(float(x) for x in np.asarray(kw[k], np.float64).reshape(-1)[:3])
    for k in ("color_matrix", "rgb_cam"):
      if k in kw:
        kw[k] = tuple(map(tuple, np.asarray(kw[k], np.float64).reshape(3, 3).tolist()))
    if "pattern" in kw:
      kw["pattern"] = check_pattern(kw["pattern"])
    return cls(**kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def cam2rgb(self) -> np.ndarray:
    """camera RGB -> linear sRGB: rgb_cam, else derived from the colour matrix, else I."""
    if self.rgb_cam is not None:
      return np.asarray(self.rgb_cam, np.float64)
    if self.color_matrix is not None:
      return rgb_cam_from_color_matrix(self.color_matrix)
    return np.eye(3)


def camera_features(profile: CameraProfile) -> dict[str, np.ndarray]:
  """What a task that takes the target camera (IOSpec.camera) sees of it: "rgb2cam" (3, 3),
  linear sRGB -> camera RGB with rows summing to 1 (the inverse of cam2rgb), and "wb" (3,),
  the camera's white-balance gains R, G, B normalised to G = 1."""
  wb = np.asarray(profile.wb, np.float64).reshape(-1)[:3]
  return {"rgb2cam": np.linalg.inv(profile.cam2rgb()).astype(np.float32),
          "wb": (wb / wb[1]).astype(np.float32)}


def rgb_cam_from_color_matrix(color_matrix) -> np.ndarray:
  """camera -> linear sRGB from an XYZ -> camera matrix, rows normalised to sum to 1 (as
  LibRaw derives rgb_cam)."""
  cam_rgb = np.asarray(color_matrix, np.float64).reshape(3, 3) @ SRGB_TO_XYZ
  cam_rgb = cam_rgb / cam_rgb.sum(axis=1, keepdims=True)
  return np.linalg.inv(cam_rgb)


# When the camera is unknown: as a DNG ColorMatrix, XYZ -> linear sRGB says "camera RGB is
# linear sRGB", the honest choice.
DEFAULT_PROFILE = CameraProfile(color_matrix=tuple(map(tuple, XYZ_TO_SRGB.tolist())),
                                camera="")
DEFAULT_PROFILE_DESC = ("default profile (no camera known): RGGB, 12-bit, black 0, white "
                        "4095, white balance 1, sRGB colour matrix")


def target_gains(wb) -> np.ndarray:
  """float32 (3,) R, G, B gains the `invisp` / `linear` RAW target is white-balanced with.

  The camera's gains divided by their largest, as InvISP's official FiveK preprocessing
  does: no gain exceeds 1, so white balance never pushes a pixel the sensor did not clip
  past white, and the target needs no clipping. Any positive scaling of `wb` gives the
  same gains (of LibRaw's 4 values R, G, B, G2 the first three are used). A DNG writer
  undoes the target space by dividing by these gains.
  """
  w = np.asarray(wb, np.float64).reshape(-1)
  if w.size < 3 or not np.all(np.isfinite(w[:3])) or np.any(w[:3] <= 0):
    raise ValueError(f"white balance must hold 3 finite positive gains (R, G, B), got {wb!r}")
  w = w[:3]
  return (w / w.max()).astype(np.float32)
