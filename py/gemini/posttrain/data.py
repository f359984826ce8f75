"""Packed chat rows as an epoch-shuffled, exactly resumable batch source (loop.py protocol)."""

from __future__ import annotations

from typing import Dict

import numpy as np


class PackedRows:
  """rows: dict of [R, S] arrays (chat.pack). next() -> a [B, S] batch of rows."""

  def __init__(self, rows: Dict[str, np.ndarray], batch_size: int, seed: int = 0):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.n = len(next(iter(rows.values())))
    if batch_size > self.n:
      raise ValueError(f"batch_size {batch_size} > {self.n} packed rows")
    self.epoch, self.pos = 0, 0

  def next(self) -> Dict[str, np.ndarray]:
    if self.pos + self.batch_size > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
    idx = order[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return {k: v[idx] for k, v in self.rows.items()}

  def state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def restore(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
