"""Evaluation decontamination by n-gram overlap (13-grams, as the reports and GPT-3 did).

Text is normalised to lowercase word tokens (\\w+); every 13-gram of every held-out document
is hashed into an index; a training document containing any indexed 13-gram is contaminated
and removed. Held-out documents shorter than 13 words contribute nothing (a short phrase would
flag every text quoting a common expression).
"""

from __future__ import annotations

import hashlib
import re
from typing import Dict, List, Sequence, Set, Tuple

_WORD = re.compile(r"\w+")


def _words(text: str) -> List[str]:
  return _WORD.findall(text.lower())


def _h(gram) -> bytes:
  return hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest()


def ngram_hashes(text: str, n: int = 13) -> Set[bytes]:
  w = _words(text)
  return {_h(w[i:i + n]) for i in range(len(w) - n + 1)}


class NgramIndex:
  """Hashed n-grams of held-out documents, with the document each came from."""

  def __init__(self, heldout: Sequence[Dict[str, str]], n: int = 13):
    self.n = n
    self.owner: Dict[bytes, str] = {}
    for d in heldout:
      w = _words(d["text"])
      for i in range(len(w) - n + 1):
        self.owner.setdefault(_h(w[i:i + n]), d["id"])

  def hits(self, text: str) -> List[str]:
    """Held-out document ids sharing an n-gram with `text` (sorted, unique)."""
    w = _words(text)
    found = set()
    for i in range(len(w) - self.n + 1):
      o = self.owner.get(_h(w[i:i + self.n]))
      if o is not None:
        found.add(o)
    return sorted(found)


def decontaminate(docs: Sequence[Dict[str, str]], index: NgramIndex
                  ) -> Tuple[List[Dict[str, str]], List[Tuple[str, List[str]]]]:
  """(clean documents, [(training doc id, held-out ids it overlaps)])."""
  kept, hits = [], []
  for d in docs:
    h = index.hits(d["text"])
    if h:
      hits.append((d["id"], h))
    else:
      kept.append(d)
  return kept, hits
