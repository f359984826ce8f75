"""A synthetic token stream with the Loader protocol, for benchmarks and data-free runs.

Each row is drawn from a fixed random first-order Markov chain over `vocab_size` tokens
(seeded; every token has `fanout` possible successors), so the stream is learnable: its
conditional entropy is log(fanout) nats while its unigram entropy is ~log(vocab_size).
`state()` is the batch counter: batch i depends only on (seed, i), so restore is exact.
Shard j of n (`shard`, `num_shards`, see data_shards.py) draws its rows from (seed, i, j, n).
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np


class SyntheticLoader:
  """next() -> {tokens, targets, segment_ids, positions}: int32 [batch_size, seq_len]."""

  def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0,
               fanout: int = 4, shard: int = 0, num_shards: int = 1):
    if vocab_size < 2 or fanout < 1:
      raise ValueError(f"SyntheticLoader: vocab_size={vocab_size} fanout={fanout}")
    self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
    self.seed, self.fanout = seed, fanout
    self._stream = [seed] if num_shards == 1 else [seed, shard, num_shards]
    rng = np.random.default_rng([seed, 7])
    self._succ = rng.integers(0, vocab_size, size=(vocab_size, fanout))
    self._i = 0

  @property
  def conditional_entropy(self) -> float:
    """Entropy (nats) of the next token given the current one (upper bound: log fanout)."""
    return math.log(self.fanout)

  def next(self) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(self._stream + [self._i] if len(self._stream) > 1
                                else [self.seed, self._i])
    b, s = self.batch_size, self.seq_len
    toks = np.empty((b, s + 1), np.int64)
    toks[:, 0] = rng.integers(0, self.vocab_size, size=b)
    choice = rng.integers(0, self.fanout, size=(b, s))
    for t in range(s):
      toks[:, t + 1] = self._succ[toks[:, t], choice[:, t]]
    self._i += 1
    return {"tokens": toks[:, :-1].astype(np.int32), "targets": toks[:, 1:].astype(np.int32),
            "segment_ids": np.ones((b, s), np.int32),
            "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()}

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> Dict[str, int]:
    return {"batch": self._i, "seed": self.seed}

  def restore(self, state: Dict[str, int]) -> None:
    if state.get("seed") != self.seed:
      raise ValueError(f"SyntheticLoader.restore: state seed {state.get('seed')} != {self.seed}")
    self._i = int(state["batch"])

  def close(self) -> None:
    pass
