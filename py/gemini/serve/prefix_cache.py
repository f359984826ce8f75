"""Prefix cache: KV snapshots of prompt prefixes, reused by later prompts that start with them.

Snapshots are taken at every full prefill chunk and at the end of each prompt, keyed by the
exact token prefix. A lookup finds the entry sharing the longest prefix with a new prompt: a
whole stored prompt is reused as it is; otherwise the shared part is reused up to where the
snapshot's cache positions still equal token positions (`aligned`: the full chunks, before any
padding), and the row is truncated there. The engine prefills only the rest (a shared system
prompt, the previous turns of a chat even when the new turn re-tokenises their boundary). A snapshot keeps only the first bucket(n) cache positions (n rounded
up to a power of two), so the number of restore shapes stays logarithmic in the cache length.
Least recently used entries are dropped beyond `max_entries`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Optional, Sequence, Tuple


@dataclasses.dataclass
class Entry:
  tokens: Tuple[int, ...]
  snapshot: dict          # model_backend.trim_row(row, length)
  logits: object          # f32 [V]: the next-token logits after the prefix
  aligned: int = 0        # tokens [0, aligned) sit at cache positions [0, aligned)


@dataclasses.dataclass
class PrefixStats:
  lookups: int = 0
  hits: int = 0
  tokens_saved: int = 0
  stored: int = 0


def bucket(n: int, floor: int = 16) -> int:
  """Smallest power of two >= max(n, floor)."""
  b = floor
  while b < n:
    b *= 2
  return b


class PrefixCache:
  """See the module docstring. Not thread-safe: owned by the engine's loop thread."""

  def __init__(self, max_entries: int = 32):
    self.max_entries = max_entries
    self.entries: "collections.OrderedDict[Tuple[int, ...], Entry]" = collections.OrderedDict()
    self.stats = PrefixStats()

  def lookup(self, tokens: Sequence[int], record: bool = True) -> Tuple[Optional[Entry], int]:
    """(entry, n): reuse the entry's first n tokens (n == len(entry.tokens): all of it, as
    stored; else truncate to n). (None, 0) if nothing is shared. record=False: a peek that
    changes neither the stats nor the LRU order."""
    if record:
      self.stats.lookups += 1
    if self.max_entries <= 0:
      return None, 0
    best, best_n = None, 0
    t = tuple(tokens)
    for key, e in self.entries.items():
      common = _common_prefix(key, t)
      n = common if common == len(key) else min(common, e.aligned, len(t) - 1)
      if n > best_n:
        best, best_n = e, n
    if best is not None and record:
      self.entries.move_to_end(best.tokens)
      self.stats.hits += 1
      self.stats.tokens_saved += best_n
    return best, best_n

  def store(self, tokens: Sequence[int], snapshot: dict, logits, aligned: int) -> None:
    if self.max_entries <= 0:
      return
    key = tuple(tokens)
    self.entries[key] = Entry(key, snapshot, logits, aligned)
    self.entries.move_to_end(key)
    self.stats.stored += 1
    while len(self.entries) > self.max_entries:
      self.entries.popitem(last=False)


def _common_prefix(a: Tuple[int, ...], b: Tuple[int, ...]) -> int:
  n = min(len(a), len(b))
  i = 0
  while i < n and a[i] == b[i]:
    i += 1
  return i
