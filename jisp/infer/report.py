"""The report image of `jisp eval`: per image, input | prediction | truth | error map."""
from __future__ import annotations

import numpy as np

from jisp.core import images

ERROR_SCALE = 0.1  # |error| of 0.1 (10% of the range) is full brightness in the error map


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


def report_image(rows, width: int = 256, max_rows: int = 8,
                 names=("input", "prediction", "truth"), metric: str = "PSNR") -> np.ndarray:
  """rows: (name, input, prediction, truth, score); one labelled row of four panels each."""
  from PIL import Image, ImageDraw
  head, label_h, gap = 18, 16, 4
  rows = rows[:max_rows]
  thumbs = [[_thumb(x, width) for x in (inp, pred, true, error_map(pred, true))]
            for _, inp, pred, true, _ in rows]
  heights = [t[0].shape[0] for t in thumbs]
  H = head + sum(h + label_h + gap for h in heights)
  W = 4 * width + 3 * gap
  canvas = Image.new("RGB", (W, H), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  titles = (*names, f"|error| (white = {ERROR_SCALE})")
  for c, t in enumerate(titles):
    draw.text((c * (width + gap) + 4, 3), t, fill=(0, 0, 0))
  y = head
  for (name, *_, p), ts, h in zip(rows, thumbs, heights):
    draw.text((4, y + 2), f"{name}  {metric} {p:.2f} dB", fill=(0, 0, 0))
    y += label_h
    for c, t in enumerate(ts):
      canvas.paste(Image.fromarray(t), (c * (width + gap), y))
    y += h + gap
  return np.asarray(canvas)
