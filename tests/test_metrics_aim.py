"""AIM 2022 metrics (jisp.core.metrics.aim_psnr / aim_ssim) against the organisers' scoring
formula (mv-lab/AISP scoring/evaluation.py + myssim.py), written out here independently
with scipy's Gaussian filter in float64, on fixed arrays."""
import numpy as np
import pytest

from jisp.core import metrics


def organisers_psnr(ref, res):
  mse = np.mean(np.square(ref.astype(np.float64) - res.astype(np.float64)))
  return 10 * np.log10(1.0 / mse)


def organisers_ssim(ref, res):
  """Per channel: scipy.ndimage.gaussian_filter(sigma=1.5) (default truncate 4, mode
  'reflect'), population covariance, K1 0.01, K2 0.03, data range 1, SSIM map cropped by
  (11 - 1) / 2 = 5 px, mean; then the mean of the 4 channels."""
  from scipy.ndimage import gaussian_filter
  out = []
  for c in range(ref.shape[-1]):
    x = ref[..., c].astype(np.float64)
    y = res[..., c].astype(np.float64)
    f = lambda a: gaussian_filter(a, sigma=1.5)
    ux, uy = f(x), f(y)
    vx = f(x * x) - ux * ux
    vy = f(y * y) - uy * uy
    vxy = f(x * y) - ux * uy
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    out.append(s[5:-5, 5:-5].mean())
  return float(np.mean(out))


def challenge_pair(seed, shape=(40, 56, 4), noise=30):
  """A reference and a prediction on the challenge's grid: uint16 codes / 1024 in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
  base = 300 + 400 * (0.5 + 0.5 * np.sin(6 * xx + 3 * yy))[..., None] * \
      rng.uniform(0.6, 1.0, shape[-1])
  ref = np.clip(np.round(base + rng.normal(0, 20, shape)), 0, 1024).astype(np.uint16)
  res = np.clip(np.round(ref + rng.normal(0, noise, shape)), 0, 1024).astype(np.uint16)
  return ref.astype(np.float64) / 1024.0, res.astype(np.float64) / 1024.0


@pytest.mark.parametrize("seed,noise", [(0, 5), (1, 30), (2, 120)])
def test_aim_metrics_match_the_organisers_formula(seed, noise):
  ref, res = challenge_pair(seed, noise=noise)
  assert abs(float(metrics.aim_psnr(res, ref)) - organisers_psnr(ref, res)) < 1e-4
  assert abs(float(metrics.aim_ssim(res, ref)) - organisers_ssim(ref, res)) < 2e-5


def test_aim_metrics_per_image_and_limits():
  a, b = challenge_pair(4, noise=40)
  c, d = challenge_pair(5, noise=10)
  batch_p = np.asarray(metrics.aim_psnr(np.stack([b, d]), np.stack([a, c])))
  batch_s = np.asarray(metrics.aim_ssim(np.stack([b, d]), np.stack([a, c])))
  assert batch_p.shape == (2,) and batch_s.shape == (2,)
  assert abs(batch_p[1] - organisers_psnr(c, d)) < 1e-4
  assert abs(batch_s[0] - organisers_ssim(a, b)) < 2e-5
  assert abs(float(metrics.aim_ssim(a, a)) - 1.0) < 1e-6
  assert float(metrics.aim_psnr(a, a)) == metrics.MAX_PSNR  # the script says 999 there
  with pytest.raises(ValueError):
    metrics.aim_ssim(a[:10, :10], a[:10, :10])  # nothing left after the 5 px crop
