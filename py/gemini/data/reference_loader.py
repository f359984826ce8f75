"""Pure Python/NumPy loader implementing the C++ loader's algorithm (csrc/loader/loader.cc).

It is the independent reference the tests hold the C++ loader equal to (batch for batch),
and the "plain Python/NumPy loader" baseline of `//csrc/loader:bench`. It reads shards with
its own parser (`read_shard_tokens`), not the C++ one.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from gemini.crc32c import crc32c

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
  """splitmix64 finaliser (same constants as gemini::loader::Mix64)."""
  x = (x + 0x9E3779B97F4A7C15) & M64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
  return x ^ (x >> 31)


def read_shard_tokens(path: str, verify: bool = False) -> List[np.ndarray]:
  """Token arrays of every record of a `.gshd` file (multimodal records: their token list)."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != b"GEMSHARD":
    raise ValueError(f"{path}: bad magic")
  n, index_offset = struct.unpack_from("<QQ", data, 16)
  out = []
  for i in range(n):
    off, length, kind, crc = struct.unpack_from("<QQII", data, index_offset + 24 * i)
    if verify and crc32c(data[off:off + length]) != crc:
      raise ValueError(f"{path}: record {i} at byte offset {off}: CRC mismatch")
    if kind in (1, 2):
      out.append(np.frombuffer(data, "<u2" if kind == 1 else "<u4", length // (2 * kind), off))
    else:
      width, t, m, _ = struct.unpack_from("<4I", data, off)
      out.append(np.frombuffer(data, "<u2" if width == 2 else "<u4", t, off + 16 + 56 * m))
  return out


def permutation(seed: int, source: int, epoch: int, n: int) -> List[int]:
  p = list(range(n))
  base = mix64((mix64((mix64(seed) + 1000003 * source + 1) & M64) + epoch) & M64)
  for i in range(n - 1, 0, -1):
    j = mix64((base + i) & M64) % (i + 1)
    p[i], p[j] = p[j], p[i]
  return p


class ReferenceLoader:
  """Same constructor meaning as `gemini.data.loader.Loader` (mixture given pre-resolved as
  [(until_batch or -1, [weight per source])]); `next()` returns the same dict."""

  def __init__(self, docs_by_source: Mapping[str, Sequence[np.ndarray]], batch_size: int,
               seq_len: int, stages: Optional[list] = None, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.names = list(docs_by_source)
    self.docs = [list(docs_by_source[n]) for n in self.names]
    self.B, self.S = batch_size, seq_len
    self.stages = stages or [(-1, [1.0] * len(self.names))]
    self.seed, self.pi, self.pc = seed, process_index, process_count
    self.batch_index = self.draws = 0
    self.cur = None  # (source, record, offset)
    self.epochs = [0] * len(self.names)
    self.cursors = [0] * len(self.names)
    self._perm = {}

  def _slice(self, s: int) -> int:
    n = len(self.docs[s])
    return (n - self.pi + self.pc - 1) // self.pc if n > self.pi else 0

  def _draw(self):
    weights = self.stages[-1][1]
    for until, w in self.stages:
      if until < 0 or self.batch_index < until:
        weights = w
        break
    h = mix64((mix64((mix64(self.seed) + self.pi) & M64) + self.draws) & M64)
    self.draws += 1
    u = float(h >> 11) * 2.0**-53 * sum(weights)  # sum() adds left to right like accumulate.
    acc, s = 0.0, 0
    while s + 1 < len(weights):
      acc += weights[s]
      if u < acc and weights[s] > 0:
        break
      s += 1
    while weights[s] == 0:
      s -= 1
    key = (s, self.epochs[s])
    if key not in self._perm:
      self._perm = {k: v for k, v in self._perm.items() if k[0] != s}
      self._perm[key] = permutation(self.seed, s, self.epochs[s], len(self.docs[s]))
    rec = self._perm[key][self.pi + self.cursors[s] * self.pc]
    self.cursors[s] += 1
    if self.cursors[s] == self._slice(s):
      self.cursors[s] = 0
      self.epochs[s] += 1
    self.cur = [s, rec, 0]

  def next(self) -> Dict[str, np.ndarray]:
    B, S = self.B, self.S
    out = {k: np.zeros((B, S), np.int32) for k in ("tokens", "targets", "segment_ids",
                                                    "positions")}
    for row in range(B):
      col, seg = 0, 0
      while col < S:
        if self.cur is None:
          self._draw()
        s, rec, off = self.cur
        doc = self.docs[s][rec]
        pairs = max(len(doc) - 1, 0)
        if off >= pairs:
          self.cur = None
          continue
        n = min(pairs - off, S - col)
        seg += 1
        out["tokens"][row, col:col + n] = doc[off:off + n]
        out["targets"][row, col:col + n] = doc[off + 1:off + n + 1]
        out["segment_ids"][row, col:col + n] = seg
        out["positions"][row, col:col + n] = np.arange(n)
        col += n
        self.cur[2] = off + n
        if off + n >= pairs:
          self.cur = None
    self.batch_index += 1
    return out
