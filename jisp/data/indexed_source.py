"""Base of batch sources whose batch n is a pure function of n (numpy only).

Subclasses implement `batch_at(n)`; the position is just the batch counter, so resuming
replays exactly the batches an unbroken run would see.
"""
from __future__ import annotations

import numpy as np


class IndexedBatchSource:
  batches: int = 0

  def batch_at(self, n: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def next(self) -> dict[str, np.ndarray]:
    b = self.batch_at(self.batches)
    self.batches += 1
    return b

  def get_state(self) -> dict:
    return {"batches": self.batches}

  def set_state(self, state: dict) -> None:
    self.batches = int(state["batches"])

  def close(self) -> None:
    pass
