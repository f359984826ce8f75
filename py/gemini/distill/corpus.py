"""The bundled corpus in the teacher's tokenisation, cut into fixed windows.

Documents come from a prepared corpus directory (`gemini.data.prepare --out=DIR`: its
`clean/*.jsonl` train split and `heldout/heldout.jsonl`), or, without one, straight from the
registry packages' readers (`gemini.data.sources`) with a deterministic held-out split
(CRC-32C of the document id mod `heldout_every`). Documents are interleaved round-robin over
sources (so a prefix of the windows spans every source), tokenised with the teacher's
tokenizer, joined with the document separator and cut into windows of `seq_len + 1` tokens:
window w gives inputs w[:-1] and next-token targets w[1:].
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Tuple

import numpy as np

from gemini.crc32c import crc32c
from gemini.data import sources

DEFAULT_SOURCES = ("bible", "gcide", "wordnet", "fortunes", "code")


def _read_jsonl(path: str) -> List[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def documents(corpus_dir: str = "", max_bytes_per_source: int = 300_000,
              heldout_every: int = 10) -> Tuple[List[dict], List[dict]]:
  """-> (train docs, held-out docs), each {"id", "source", "text"} interleaved over sources."""
  if corpus_dir:
    clean = sorted(glob.glob(os.path.join(corpus_dir, "clean", "*.jsonl")))
    held = os.path.join(corpus_dir, "heldout", "heldout.jsonl")
    if not clean or not os.path.exists(held):
      raise FileNotFoundError(f"{corpus_dir}: no clean/*.jsonl or heldout/heldout.jsonl (run "
                              "gemini.data.prepare --out=DIR first, or omit --corpus)")
    by_source = {os.path.basename(p)[:-6]: _read_jsonl(p) for p in clean}
    return _interleave(by_source), _read_jsonl(held)
  train: Dict[str, List[dict]] = {}
  held: Dict[str, List[dict]] = {}
  for name in DEFAULT_SOURCES:
    for d in sources.TEXT_SOURCES[name](max_bytes_per_source):
      split = held if crc32c(d["id"].encode()) % heldout_every == 0 else train
      split.setdefault(name, []).append(d)
  return _interleave(train), _interleave(held)


def _interleave(by_source: Dict[str, List[dict]]) -> List[dict]:
  out, lists = [], [by_source[k] for k in sorted(by_source)]
  for i in range(max((len(x) for x in lists), default=0)):
    out.extend(x[i] for x in lists if i < len(x))
  return out


def windows(docs: List[dict], tokenizer, seq_len: int, sep_id: int, max_windows: int) -> np.ndarray:
  """-> int32 [N, seq_len + 1] windows (N <= max_windows) of the separator-joined stream."""
  need = max_windows * (seq_len + 1)
  stream: List[int] = []
  for d in docs:
    stream.extend(tokenizer.encode(d["text"]).ids)
    stream.append(sep_id)
    if len(stream) >= need:
      break
  n = min(max_windows, len(stream) // (seq_len + 1))
  return np.asarray(stream[:n * (seq_len + 1)], np.int32).reshape(n, seq_len + 1)
