"""The parametric-camera source: deterministic, process shares partition the global batch."""
import numpy as np

from jisp.data.synthetic import SyntheticSource


def test_process_shares_concatenate_to_the_global_batch():
  full = SyntheticSource(patch_size=16, local_batch=8, seed=3).batch_at(5)
  parts = [SyntheticSource(patch_size=16, local_batch=4, seed=3, process_index=i,
                           process_count=2).batch_at(5) for i in range(2)]
  for k in ("rgb", "raw"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    assert full[k].shape == (8, 16, 16, 3) and full[k].dtype == np.float32
    assert 0.0 <= full[k].min() and full[k].max() <= 1.0


def test_state_round_trip_and_splits_differ():
  a = SyntheticSource(patch_size=16, local_batch=2, seed=0)
  a.next(); a.next()
  b = SyntheticSource(patch_size=16, local_batch=2, seed=0)
  b.set_state(a.get_state())
  np.testing.assert_array_equal(a.next()["raw"], b.next()["raw"])
  test = SyntheticSource(patch_size=16, local_batch=2, seed=0, split="test")
  assert not np.array_equal(test.batch_at(0)["raw"], a.batch_at(0)["raw"])
  # rgb is a deterministic function of raw (a camera), not noise: same raw -> same rgb
  x = a.batch_at(0)
  assert np.corrcoef(x["rgb"].mean(-1).ravel(), x["raw"].mean(-1).ravel())[0, 1] > 0.8
