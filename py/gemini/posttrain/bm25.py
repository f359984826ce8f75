"""Okapi BM25 over a list of documents (the search tool's ranking).

    score(q, d) = sum over distinct query terms t of
        idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))        (Lucene's, never negative)

Terms are lower-cased runs of letters and digits. The index is a sparse term x document
matrix of the per-term BM25 weights, so a query is one sparse row sum.
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import scipy.sparse

_TERM = re.compile(r"[a-z0-9]+")


def terms(text: str) -> List[str]:
  return _TERM.findall(text.lower())


class BM25:

  def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75):
    self.k1, self.b, self.n = k1, b, len(docs)
    vocab: Dict[str, int] = {}
    rows, cols, tfs = [], [], []
    lengths = np.zeros(len(docs), np.float64)
    for j, d in enumerate(docs):
      counts: Dict[int, int] = {}
      ts = terms(d)
      lengths[j] = len(ts)
      for t in ts:
        i = vocab.setdefault(t, len(vocab))
        counts[i] = counts.get(i, 0) + 1
      rows += list(counts)
      cols += [j] * len(counts)
      tfs += list(counts.values())
    self.vocab = vocab
    tf = np.asarray(tfs, np.float64)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    df = np.bincount(rows, minlength=len(vocab)).astype(np.float64)
    self.idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
    avgdl = lengths.mean() if len(docs) else 1.0
    norm = k1 * (1 - b + b * lengths[cols] / max(avgdl, 1e-9))
    w = self.idf[rows] * tf * (k1 + 1) / (tf + norm)
    self.weights = scipy.sparse.csr_matrix((w, (rows, cols)), shape=(len(vocab), self.n))

  def scores(self, query: str) -> np.ndarray:
    """BM25 score of every document, f64 [N] (each distinct query term counted once)."""
    ids = sorted({self.vocab[t] for t in terms(query) if t in self.vocab})
    if not ids:
      return np.zeros(self.n)
    return np.asarray(self.weights[ids].sum(axis=0)).ravel()

  def search(self, query: str, k: int = 1) -> List[Tuple[int, float]]:
    """The k best (document index, score) with score > 0, best first (ties: lower index)."""
    s = self.scores(query)
    order = np.lexsort((np.arange(self.n), -s))[:k]
    return [(int(j), float(s[j])) for j in order if s[j] > 0]
