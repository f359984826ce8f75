"""Per-process data: each process reads only the rows of the global batch its devices hold.

The global batch of B rows is cut into `num_shards` blocks of B / num_shards consecutive
rows; block j is the stream of its own loader (`make(j, num_shards, rows)`: the corpus
Loader with process_index=j, process_count=num_shards, or the synthetic stream's shard j).
A process builds loaders only for the blocks that its devices' part of the batch sharding
touches and leaves the other rows zero (never read by `jax.make_array_from_callback`). The
data therefore depends on `num_shards` but not on how many processes share the work: a
1-process run with num_shards=2 sees exactly the batches of a 2-process run.

state() = {"num_shards": n, "shards": {"j": <loader j's state>}} for this process's blocks;
the trainer merges all processes' states into the checkpoint, restore() takes its own.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions")


def needed_shards(sharding, shape: Sequence[int], num_shards: int) -> List[int]:
  """Blocks of rows (of `num_shards` over shape[0]) that this process's devices hold."""
  rows = shape[0]
  if rows % num_shards:
    raise ValueError(f"batch_size={rows} is not a multiple of data_shards={num_shards}")
  per = rows // num_shards
  held = set()
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    lo, hi, _ = index[0].indices(rows)
    held.update(range(lo // per, (hi - 1) // per + 1))
  return sorted(held)


class DataShards:
  """Loader protocol over the blocks `shards` of a `num_shards`-way split global batch."""

  def __init__(self, make: Callable[[int, int, int], Any], batch_size: int, seq_len: int,
               num_shards: int, shards: Sequence[int]):
    if num_shards < 1 or batch_size % num_shards:
      raise ValueError(f"batch_size={batch_size} is not a multiple of data_shards={num_shards}")
    self.batch_size, self.seq_len, self.num_shards = batch_size, seq_len, num_shards
    self.rows = batch_size // num_shards
    self.loaders: Dict[int, Any] = {j: make(j, num_shards, self.rows) for j in shards}

  def next(self) -> Dict[str, np.ndarray]:
    out = {k: np.zeros((self.batch_size, self.seq_len), np.int32) for k in BATCH_KEYS}
    for j, loader in self.loaders.items():
      part = loader.next()
      for k in BATCH_KEYS:
        out[k][j * self.rows:(j + 1) * self.rows] = part[k]
    return out

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> Dict[str, Any]:
    return {"num_shards": self.num_shards,
            "shards": {str(j): l.state() for j, l in self.loaders.items()}}

  def restore(self, state: Dict[str, Any]) -> None:
    if state.get("num_shards") != self.num_shards:
      raise ValueError(f"loader state was saved with data_shards={state.get('num_shards')}, "
                       f"this run has {self.num_shards}: the data stream would differ")
    for j, loader in self.loaders.items():
      if str(j) not in state["shards"]:
        raise ValueError(f"loader state has no shard {j} (has {sorted(state['shards'])})")
      loader.restore(state["shards"][str(j)])

  def close(self) -> None:
    for loader in self.loaders.values():
      if hasattr(loader, "close"):
        loader.close()
