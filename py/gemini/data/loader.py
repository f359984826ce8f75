"""Python face of the C++ packing loader (`//csrc/loader:_loader`); API in README.md.

    loader = Loader({"bible": [paths...], "code": [...]}, batch_size=4, seq_len=256,
                    mixture=Mixture.constant({"bible": 0.7, "code": 0.3}), seed=0)
    batch = next(loader)   # tokens, targets, segment_ids, positions: int32 [B, S]
    state = loader.state(); loader.restore(state)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from csrc.loader import _loader

ShardError = _loader.ShardError
BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class Stage:
  """Mixture weights used for batch indices < `until_batch` (None = until the end)."""
  weights: Mapping[str, float]
  until_batch: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Staged mixture weights over named sources (the reports raise domain data late)."""
  stages: Sequence[Stage]

  @staticmethod
  def constant(weights: Mapping[str, float]) -> "Mixture":
    return Mixture([Stage(dict(weights))])

  def resolve(self, names: Sequence[str]) -> List[tuple]:
    """[(until_batch or -1, [weight per name])]; unknown source names are an error."""
    out, last = [], -1
    for i, st in enumerate(self.stages):
      unknown = set(st.weights) - set(names)
      if unknown:
        raise ValueError(f"mixture stage {i}: unknown sources {sorted(unknown)}; have {list(names)}")
      until = -1 if st.until_batch is None else int(st.until_batch)
      if st.until_batch is None and i != len(self.stages) - 1:
        raise ValueError(f"mixture stage {i}: only the last stage may have until_batch=None")
      if until >= 0 and until <= last:
        raise ValueError(f"mixture stage {i}: until_batch {until} not increasing")
      last = until
      out.append((until, [float(st.weights.get(n, 0.0)) for n in names]))
    return out


class Shard:
  """A validated, mmap'd `.gshd` file (csrc/loader/FORMAT.md)."""

  def __init__(self, path: str, verify: bool = True):
    self._s = _loader.Shard(os.fspath(path), verify)

  @staticmethod
  def from_bytes(data: bytes, name: str = "<bytes>", verify: bool = True) -> "Shard":
    s = Shard.__new__(Shard)
    s._s = _loader.Shard.from_bytes(data, name, verify)
    return s

  def __len__(self) -> int:
    return len(self._s)

  @property
  def vocab_size(self) -> int:
    return self._s.vocab_size

  def tokens(self, i: int) -> np.ndarray:
    """Record i's token ids: read-only uint16/uint32 view of the mapped file."""
    return self._s.tokens(i)

  def record(self, i: int) -> dict:
    """{"kind": 1|2|3, "tokens": view, "media": [{"modality", "encoded", "placement",
    "num_placeholders", "array" (zero-copy view)}]} of record i."""
    return {"kind": self._s.kind(i), "tokens": self._s.tokens(i), "media": self._s.media(i)}

  def verify_record(self, i: int) -> None:
    """Recomputes record i's CRC-32C (for shards opened with verify=False)."""
    self._s.verify_record(i)


class Loader:
  """Deterministic, resumable packing loader over named sources of shards."""

  def __init__(self, sources: Mapping[str, Sequence[str]], batch_size: int, seq_len: int,
               mixture: Optional[Mixture] = None, seed: int = 0, process_index: int = 0,
               process_count: int = 1, prefetch: int = 2, threads: int = 1, verify: bool = True,
               vocab_size: int = 0):
    """`vocab_size`: the model's vocabulary (0 = unchecked); a shard with a larger header
    vocab_size is refused here and any packed id >= it raises ShardError from next()."""
    self.names = list(sources)
    if not self.names:
      raise ValueError("Loader: no sources")
    shards = []
    for name in self.names:
      paths = list(sources[name])
      if not paths:
        raise ValueError(f"Loader: source {name!r} has no shard paths")
      shards.append((name, [_loader.Shard(os.fspath(p), verify) for p in paths]))
    mixture = mixture or Mixture.constant({n: 1.0 for n in self.names})
    self.batch_size, self.seq_len = int(batch_size), int(seq_len)
    self._l = _loader.Loader(shards, mixture.resolve(self.names), self.batch_size, self.seq_len,
                             int(seed), int(process_index), int(process_count), int(prefetch),
                             int(threads), int(vocab_size))

  @staticmethod
  def from_manifest(manifest_path: str, batch_size: int, seq_len: int,
                    mixture: Optional[Mixture] = None, **kwargs) -> "Loader":
    """Training sources of a `prepare` output (held-out shards excluded)."""
    with open(manifest_path) as f:
      m = json.load(f)
    root = os.path.dirname(os.path.abspath(manifest_path))
    sources = {name: [os.path.join(root, p) for p in info["shards"]]
               for name, info in m["sources"].items() if info["shards"]}
    return Loader(sources, batch_size, seq_len, mixture=mixture, **kwargs)

  def next(self) -> Dict[str, np.ndarray]:
    """The next batch: tokens, targets, segment_ids, positions, each int32 [B, S]."""
    return dict(zip(BATCH_KEYS, self._l.next()))

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> dict:
    """Position after the last batch returned (a few ints; JSON-serialisable)."""
    return self._l.state()

  def restore(self, state: Mapping) -> None:
    """Continue from `state`: the next batch is the one that followed when it was taken."""
    self._l.restore(dict(state))

  def close(self) -> None:
    self._l.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
