"""Prefix cache: KV snapshots of prompt prefixes, reused by later prompts that start with them.

Snapshots are taken at every full prefill chunk and at the end of each prompt, keyed by the
exact token prefix. A lookup returns the longest stored prefix of a new prompt; the engine
restores its KV into the slot row and prefills only the rest (a shared system prompt, or the
previous turns of a chat). A snapshot keeps only the first bucket(n) cache positions (n rounded
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

  def lookup(self, tokens: Sequence[int]) -> Optional[Entry]:
    """Longest stored entry whose tokens are a prefix of `tokens` (or None)."""
    self.stats.lookups += 1
    if self.max_entries <= 0:
      return None
    best = None
    t = tuple(tokens)
    for key, e in self.entries.items():
      if len(key) <= len(t) and (best is None or len(key) > len(best.tokens)) and t[:len(key)] == key:
        best = e
    if best is not None:
      self.entries.move_to_end(best.tokens)
      self.stats.hits += 1
      self.stats.tokens_saved += len(best.tokens)
    return best

  def store(self, tokens: Sequence[int], snapshot: dict, logits) -> None:
    if self.max_entries <= 0:
      return
    key = tuple(tokens)
    self.entries[key] = Entry(key, snapshot, logits)
    self.entries.move_to_end(key)
    self.stats.stored += 1
    while len(self.entries) > self.max_entries:
      self.entries.popitem(last=False)
