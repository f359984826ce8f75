"""Exact dedup by hash and near-dedup by MinHash-LSH over word shingles.

Exact: SHA-256 of the text after lowercasing and collapsing whitespace; later copies go.
Near: each document's set of word `shingle`-grams is hashed (64-bit); its MinHash signature is
`num_perm` minima of universal hashes (a*x + b) mod p (p = 2^61 - 1); LSH buckets the
signature into `bands` bands of `num_perm / bands` rows, and documents sharing any band bucket
are candidates. A candidate pair is a near-duplicate when its exact Jaccard similarity of
shingle sets is >= `threshold` (no false positives from the estimate); the later document goes.
With 32 bands of 4 rows, pairs at Jaccard 0.8 are found with probability 1-(1-0.8^4)^32 > 0.9999.
"""

from __future__ import annotations

import collections
import hashlib
import re
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

_P = (1 << 61) - 1
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
  return " ".join(text.lower().split())


def exact_dedup(docs: Sequence[Dict[str, str]]) -> Tuple[List[Dict[str, str]], int]:
  """(documents without exact repeats, number removed)."""
  seen: Set[bytes] = set()
  kept = []
  for d in docs:
    h = hashlib.sha256(normalize(d["text"]).encode()).digest()
    if h not in seen:
      seen.add(h)
      kept.append(d)
  return kept, len(docs) - len(kept)


def shingles(text: str, k: int = 5) -> np.ndarray:
  """Sorted unique uint64 hashes of the word k-grams of `text` (a short text: one shingle)."""
  words = _WORD.findall(text.lower())
  grams = [" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))]
  hs = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
        for g in grams]
  return np.unique(np.array(hs, dtype=np.uint64))


def minhash_params(num_perm: int = 128, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """The universal hash coefficients (a, b), uint64 [num_perm] each."""
  rng = np.random.default_rng(seed)
  return (rng.integers(1, _P, num_perm, dtype=np.uint64),
          rng.integers(0, _P, num_perm, dtype=np.uint64))


def minhash(sh: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """MinHash signature uint64 [num_perm]: min over shingles x of (a*x + b) mod (2^61 - 1)."""
  if not len(sh):
    return np.full(len(a), _P, np.uint64)
  x = sh % np.uint64(_P)
  return ((_mulmod(a[:, None], x[None, :]) + b[:, None]) % np.uint64(_P)).min(axis=1)


def _mulmod(a: np.ndarray, x: np.ndarray) -> np.ndarray:
  """(a * x) mod (2^61 - 1) for uint64 arrays < 2^61, exact, without overflow."""
  m = np.uint64(_P)
  a_hi, a_lo = a >> np.uint64(31), a & np.uint64((1 << 31) - 1)
  x_hi, x_lo = x >> np.uint64(31), x & np.uint64((1 << 31) - 1)
  # a*x = a_hi*x_hi*2^62 + (a_hi*x_lo + a_lo*x_hi)*2^31 + a_lo*x_lo ; 2^61 = 1 (mod m).
  hh = (a_hi * x_hi) % m                               # < 2^60
  mid = (a_hi * x_lo) % m + (a_lo * x_hi) % m          # < 2^62
  mid = mid % m
  lo = (a_lo * x_lo) % m
  t = (hh * np.uint64(2)) % m                          # 2^62 = 2 (mod m)
  mid_hi, mid_lo = mid >> np.uint64(30), mid & np.uint64((1 << 30) - 1)
  t2 = (mid_hi + (mid_lo << np.uint64(31))) % m        # mid * 2^31 mod m
  return (t + t2 + lo) % m


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  inter = len(np.intersect1d(a, b, assume_unique=True))
  union = len(a) + len(b) - inter
  return inter / union if union else 1.0


def near_duplicates(docs: Sequence[Dict[str, str]], threshold: float = 0.8, num_perm: int = 128,
                    bands: int = 32, shingle: int = 5, seed: int = 0
                    ) -> List[Tuple[int, int, float]]:
  """Pairs (i, j, jaccard) with i < j whose shingle sets have Jaccard >= threshold."""
  if num_perm % bands:
    raise ValueError(f"near_duplicates: num_perm {num_perm} not divisible by bands {bands}")
  rows = num_perm // bands
  sets = [shingles(d["text"], shingle) for d in docs]
  a, b = minhash_params(num_perm, seed)
  sigs = [minhash(s, a, b) for s in sets]
  buckets: Dict[Tuple[int, bytes], List[int]] = collections.defaultdict(list)
  for i, sig in enumerate(sigs):
    for bnd in range(bands):
      buckets[(bnd, sig[bnd * rows:(bnd + 1) * rows].tobytes())].append(i)
  cands = set()
  for members in buckets.values():
    for x in range(len(members)):
      for y in range(x + 1, len(members)):
        cands.add((members[x], members[y]))
  out = []
  for i, j in sorted(cands):
    jac = jaccard(sets[i], sets[j])
    if jac >= threshold:
      out.append((i, j, jac))
  return out


def near_dedup(docs: Sequence[Dict[str, str]], **kw
               ) -> Tuple[List[Dict[str, str]], List[Tuple[int, int, float]]]:
  """(documents without the later member of each near-duplicate pair, the pairs)."""
  pairs = near_duplicates(docs, **kw)
  drop = {j for _, j, _ in pairs}
  return [d for i, d in enumerate(docs) if i not in drop], pairs
