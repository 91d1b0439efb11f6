"""Video pieces: codec simulator, pan/zoom frame synthesis, sliding-window video flow."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jisp.isp import codec, jpeg, video_synth
from jisp.models import flow_video


def psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.fixture(scope="module")
def photo():
  import skimage.data
  return skimage.data.astronaut()[100:228, 150:310].astype(np.float32) / 255.0   # 128 x 160


def test_crf_tables():
  l28, c28 = codec.crf_tables(28)
  np.testing.assert_allclose(np.asarray(l28), jpeg.LUMA_TABLE)       # QP 28 <-> Annex K
  np.testing.assert_allclose(np.asarray(c28), jpeg.CHROMA_TABLE)
  l34, _ = codec.crf_tables(34)
  np.testing.assert_allclose(np.asarray(l34), 2 * jpeg.LUMA_TABLE)   # +6 QP doubles the step
  assert float(jnp.min(codec.crf_tables(-40)[0])) == 1.0            # floored at 1


def test_warp_and_macroblock_motion():
  img = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 48, 3))
  np.testing.assert_array_equal(np.asarray(codec.warp(img, jnp.zeros((2, 32, 48, 2)))),
                                np.asarray(img))
  shift = jnp.zeros((2, 32, 48, 2)).at[..., 0].set(2.0).at[..., 1].set(-3.0)
  out = codec.warp(img, shift)   # out[y, x] = img[y + 2, x - 3]
  np.testing.assert_allclose(np.asarray(out[:, :-2, 3:]), np.asarray(img[:, 2:, :-3]), atol=1e-6)
  f = codec.macroblock_flow(jax.random.PRNGKey(1), 2, 40, 40, max_motion=3.0, jitter=0.1)
  f = np.asarray(f)
  assert f.shape == (2, 40, 40, 2)
  assert np.abs(f).max() <= 3.1 + 1e-6
  blk = f[:, :16, :16]                        # one macroblock: one motion + jitter in [0, 0.1]
  spread = blk.max(axis=(1, 2)) - blk.min(axis=(1, 2))
  assert np.all(spread <= 0.1 + 1e-6)
  assert np.abs(f[:, :16, :16].mean((1, 2)) - f[:, 16:32, 16:32].mean((1, 2))).max() > 0.05


def test_intra_only_is_the_jpeg_path(photo):
  frames = jnp.stack([photo, photo[::-1]])[None]                  # (1, 2, H, W, 3)
  dec, intra = codec.simulate(frames, jax.random.PRNGKey(0), crf=23, intra_prob=1.0,
                              rounding="round")
  assert bool(jnp.all(intra))
  ref = jpeg.jpeg_simulate(frames, tables=codec.crf_tables(23), rounding="round")
  np.testing.assert_allclose(np.asarray(dec), np.asarray(ref), atol=1e-5)


def test_inter_frames_and_crf(photo):
  # A static scene: with zero motion and jitter, a P frame is predicted from the decoded
  # previous frame, so only its (small) residual is coded.
  frames = jnp.stack([photo] * 4)[None]
  dec, intra = codec.simulate(frames, jax.random.PRNGKey(1), crf=23, intra_prob=0.0,
                              max_motion=0.0, jitter=0.0, rounding="round")
  assert np.asarray(intra).tolist() == [[True, False, False, False]]
  assert all(psnr(dec[0, t], photo) > 30 for t in range(4))
  # Quality falls as CRF rises (CRF is traced: one compile for all three).
  moving = jnp.stack([jnp.roll(photo, t, axis=1) for t in range(3)])[None]
  sim = jax.jit(lambda f, c: codec.simulate(f, jax.random.PRNGKey(2), crf=c,
                                            rounding="round")[0])
  q = [np.mean([psnr(d, m) for d, m in zip(sim(moving, c)[0], moving[0])])
       for c in (18.0, 30.0, 42.0)]
  assert q[0] > q[1] > q[2], q


def test_p_frames_code_the_residual_of_the_decoded_reference(photo):
  # Zero motion and jitter: a P frame's prediction is the decoded previous frame itself.
  # On a static scene its residual is frame 0's own coding error, mostly under the steps of
  # a coarse CRF, so frame 1 decodes to (nearly) frame 0's decoded image. Predicting from
  # the original frame instead would code a zero residual and return the original.
  kw = dict(intra_prob=0.0, max_motion=0.0, jitter=0.0, rounding="round")
  dec, _ = codec.simulate(jnp.stack([photo] * 2)[None], jax.random.PRNGKey(4), crf=35, **kw)
  d0, d1 = np.asarray(dec[0, 0]), np.asarray(dec[0, 1])
  assert np.abs(d1 - d0).mean() < 0.2 * np.abs(d0 - photo).mean()
  # Content that moved while the prediction did not: the coded residual, not the prediction
  # alone, makes the decoded frame (the prediction is the decoded frame 0, unshifted).
  moved = jnp.roll(photo, 2, axis=1)
  dec, _ = codec.simulate(jnp.stack([photo, moved])[None], jax.random.PRNGKey(5), crf=18, **kw)
  d0, d1 = dec[0, 0], dec[0, 1]
  assert psnr(d1, moved) > psnr(d0, moved) + 5.0
  assert psnr(d1, moved) > 30.0


def test_codec_gradient(photo):
  frames = jnp.stack([photo[:64, :64]] * 3)[None]
  g = jax.grad(lambda f: jnp.sum(codec.simulate(f, jax.random.PRNGKey(3), crf=30,
                                                intra_prob=0.3)[0] ** 2))(frames)
  g = np.asarray(g)
  assert np.all(np.isfinite(g)) and np.mean(np.abs(g) > 1e-6) > 0.5


def test_pan_zoom_synthesis(photo):
  # Integer pans are exact crops of the still, and RAW and sRGB share the trajectory.
  offsets = jnp.array([[-2.0, -1.0], [0.0, 0.0], [2.0, 1.0]])
  frames = video_synth.render_sequence(photo, offsets, jnp.ones(3), 32)
  h, w = photo.shape[:2]
  y0, x0 = (h - 32) // 2, (w - 32) // 2
  np.testing.assert_allclose(np.asarray(frames[1]), photo[y0:y0 + 32, x0:x0 + 32], atol=1e-6)
  np.testing.assert_allclose(np.asarray(frames[2]), photo[y0 + 2:y0 + 34, x0 + 1:x0 + 33],
                             atol=1e-6)
  raw_f, rgb_f = video_synth.synth_pair_sequence(jax.random.PRNGKey(4), photo, photo, 5, 32,
                                                 max_pan=2.0, max_zoom=0.05)
  np.testing.assert_array_equal(np.asarray(raw_f), np.asarray(rgb_f))
  assert raw_f.shape == (5, 32, 32, 3)
  assert float(jnp.abs(raw_f[0] - raw_f[4]).mean()) > 1e-3      # the camera moved
  still, _ = video_synth.synth_pair_sequence(jax.random.PRNGKey(5), photo, photo, 3, 32,
                                             max_pan=0.0, max_zoom=0.0)
  np.testing.assert_allclose(np.asarray(still[0]), np.asarray(still[2]), atol=1e-6)
  b = video_synth.synth_batch(jax.random.PRNGKey(6), jnp.stack([photo, photo]),
                              jnp.stack([photo, photo]), 3, 24)
  assert b[0].shape == (2, 3, 24, 24, 3)


def test_video_flow_window_inverse_and_sliding():
  vf = flow_video.VideoFlow(
      flow_video.flow_lib.InvISPFlow(num_blocks=3, channels=9, split=3, growth=4), 3)
  p = vf.init(jax.random.PRNGKey(7))
  x = jax.random.uniform(jax.random.PRNGKey(8), (2, 3, 16, 16, 3))
  np.testing.assert_array_equal(
      np.asarray(flow_video.unstack_frames(flow_video.stack_frames(x), 3)), np.asarray(x))
  y = jax.jit(vf.forward_window)(p, x)
  assert float(jnp.max(jnp.abs(jax.jit(vf.inverse_window)(p, y) - x))) < 1e-4
  np.testing.assert_array_equal(np.asarray(flow_video.window_indices(4, 3)),
                                [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
  video = jax.random.uniform(jax.random.PRNGKey(9), (4, 16, 16, 3))
  rgb = jax.jit(vf.render)(p, video)
  assert rgb.shape == video.shape and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
  # the frame-1 output is the centre of the window (0, 1, 2)
  np.testing.assert_allclose(np.asarray(rgb[1]),
                             np.clip(np.asarray(jax.jit(vf.forward_window)(p, video[None, :3])[0, 1]),
                                     0, 1), atol=1e-5)
  with pytest.raises(ValueError, match="odd"):
    flow_video.VideoFlow(vf.flow, 2)


def test_video_task_loss_and_grad(repo_root):
  from helpers import options
  from jisp.core.config import load
  from jisp.tasks.flow_isp import FlowISPTask
  cfg = load(repo_root / "configs" / "invisp_video_tiny.py",
             ["--config.model.growth=4", "--config.batch_size=2"])
  task = FlowISPTask(cfg)
  p = task.init_params(jax.random.PRNGKey(0))
  assert task.flow.channels == 9
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.random((2, 32, 32, 3), np.float32)) for k in ("raw", "rgb")}
  (loss, aux), g = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
      p, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and float(aux["raw_l1"]) > 0
  norms = [float(jnp.linalg.norm(x)) for x in jax.tree.leaves(g)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)
  out = task.predict(p, batch["rgb"][:, :24, :24], jax.random.PRNGKey(2), options(task))
  assert out.shape == (2, 24, 24, 3)
