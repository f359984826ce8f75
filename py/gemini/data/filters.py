"""Rule-based quality filters (the reports' heuristic rules), with counts per rule.

Rules, applied in this order; a document is removed by the first rule it fails:
  too_short     fewer than `min_chars` characters or `min_words` words
  too_long      more than `max_chars` characters
  symbol_ratio  fraction of characters that are neither letters, digits, whitespace nor common
                punctuation (.,;:!?'"()-) above `max_symbol_ratio` (source overrides allowed:
                code is symbol-heavy by nature)
  dup_lines     with >= 4 non-empty lines: fraction of lines repeating an earlier line above
                `max_dup_line_frac`
  top_trigram   with >= 50 words: characters covered by the most frequent word 3-gram above
                `max_top_trigram_frac` of all word characters (Gopher-style repetition)
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Dict, Iterable, List, Optional, Tuple

RULES = ("too_short", "too_long", "symbol_ratio", "dup_lines", "top_trigram")
_PUNCT = set(".,;:!?'\"()-")
_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  min_chars: int = 48
  min_words: int = 8
  max_chars: int = 400_000
  max_symbol_ratio: float = 0.25
  max_dup_line_frac: float = 0.35
  max_top_trigram_frac: float = 0.20
  symbol_ratio_by_source: Tuple[Tuple[str, float], ...] = (("code", 0.45),)

  def symbol_limit(self, source: str) -> float:
    return dict(self.symbol_ratio_by_source).get(source, self.max_symbol_ratio)


def symbol_ratio(text: str) -> float:
  if not text:
    return 0.0
  n = sum(1 for c in text if not (c.isalnum() or c.isspace() or c in _PUNCT))
  return n / len(text)


def dup_line_fraction(text: str) -> Optional[float]:
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if len(lines) < 4:
    return None
  seen, dups = set(), 0
  for l in lines:
    dups += l in seen
    seen.add(l)
  return dups / len(lines)


def top_trigram_fraction(words: List[str]) -> Optional[float]:
  if len(words) < 50:
    return None
  grams = collections.Counter(zip(words, words[1:], words[2:]))
  gram, count = grams.most_common(1)[0]
  return count * sum(len(w) for w in gram) / sum(len(w) for w in words)


def check(doc: Dict[str, str], cfg: FilterConfig) -> Optional[str]:
  """The first rule `doc` fails, or None if it passes."""
  text = doc["text"]
  words = _WORD.findall(text.lower())
  if len(text) < cfg.min_chars or len(words) < cfg.min_words:
    return "too_short"
  if len(text) > cfg.max_chars:
    return "too_long"
  if symbol_ratio(text) > cfg.symbol_limit(doc.get("source", "")):
    return "symbol_ratio"
  f = dup_line_fraction(text)
  if f is not None and f > cfg.max_dup_line_frac:
    return "dup_lines"
  f = top_trigram_fraction(words)
  if f is not None and f > cfg.max_top_trigram_frac:
    return "top_trigram"
  return None


def apply_filters(docs: Iterable[Dict[str, str]], cfg: FilterConfig = FilterConfig()
                  ) -> Tuple[List[Dict[str, str]], Dict[str, int]]:
  """(kept documents in order, {rule: documents removed}) ."""
  kept, counts = [], {r: 0 for r in RULES}
  for d in docs:
    rule = check(d, cfg)
    if rule is None:
      kept.append(d)
    else:
      counts[rule] += 1
  return kept, counts
