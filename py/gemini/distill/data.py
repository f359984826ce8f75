"""Batches of teacher-tokenised windows with their stored sparse teacher targets.

`WindowData(dir, split, kind, k)` reads `DIR/<split>/tokens/*.gshd` and, for kind "topk" or
"sampled", the matching `DIR/<split>/<kind>/*.gkd` (pairs checked by token-record CRC). Each
epoch visits every window once in an order drawn from (seed, epoch); `state()` /
`restore(state)` make the position exact across a restart. `next()` ->
  tokens, targets, segment_ids, positions  int32 [B,S]
  ids int32 [B,S,k], values f32 [B,S,k]    (kind topk/sampled; top-k keeps the k best of the
                                             stored ones: they are sorted by probability)
"""

from __future__ import annotations

import glob
import os
from typing import Dict, Optional

import numpy as np

from gemini.data.loader import Shard
from gemini.distill import targets_format as tf


class WindowData:

  def __init__(self, root: str, split: str, batch_size: int, kind: str = "none",
               k: Optional[int] = None, seed: int = 0):
    paths = sorted(glob.glob(os.path.join(root, split, "tokens", "*.gshd")))
    if not paths:
      raise FileNotFoundError(f"{root}/{split}/tokens: no .gshd shards (run "
                              "//py/gemini/distill:teacher_targets --out={root})")
    wins = []
    side_ids, side_vals = [], []
    for p in paths:
      shard = Shard(p)
      wins.extend(np.asarray(shard.tokens(i), np.int32) for i in range(len(shard)))
      if kind in ("topk", "sampled"):
        gkd = os.path.join(root, split, kind, os.path.basename(p)[:-5] + ".gkd")
        side = tf.TargetsShard(gkd)
        side.check_pairs(shard)
        if k is not None and kind == "topk" and k > side.max_slots:
          raise ValueError(f"{gkd}: k={k} but the shard stores {side.max_slots} ids per position")
        for i in range(len(side)):
          ids, vals = side.record(i)
          width = k if (kind == "topk" and k) else side.max_slots
          side_ids.append(ids[:, :width])
          side_vals.append(vals[:, :width])
      elif kind not in ("none", "full"):
        raise ValueError(f"unknown target kind {kind!r} (none|topk|sampled|full)")
    self.windows = np.stack(wins)
    self.ids = np.stack(side_ids) if side_ids else None
    self.values = np.stack(side_vals) if side_vals else None
    if batch_size > len(self.windows):
      raise ValueError(f"{root}/{split}: batch_size {batch_size} > {len(self.windows)} windows")
    self.batch_size, self.seed = batch_size, seed
    self.epoch, self.pos = 0, 0

  def __len__(self) -> int:
    return len(self.windows)

  def _order(self) -> np.ndarray:
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.windows))

  def next(self) -> Dict[str, np.ndarray]:
    if self.pos + self.batch_size > len(self.windows):
      self.epoch, self.pos = self.epoch + 1, 0
    rows = self._order()[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return self.rows(rows)

  def rows(self, rows) -> Dict[str, np.ndarray]:
    w = self.windows[rows]
    b, s = w.shape[0], w.shape[1] - 1
    out = {"tokens": w[:, :-1], "targets": w[:, 1:],
           "segment_ids": np.ones((b, s), np.int32),
           "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()}
    if self.ids is not None:
      out["ids"], out["values"] = self.ids[rows], self.values[rows]
    return out

  def state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def restore(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
