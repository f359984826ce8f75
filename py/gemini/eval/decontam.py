"""Contamination of an eval set by the training corpus: n-gram overlap per eval item.

An eval item is contaminated when any of its word 13-grams (gemini.data.decontaminate's
normalisation: lowercase \\w+ tokens) occurs in a training document — the method of the
Gemini 2.5 report and GPT-3. Items shorter than n words can never be flagged (reported as
`too_short`). For image tasks the analogue is an exact duplicate of the test image in the
training set (`duplicate_arrays`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from typing import Dict, Iterable, List, Sequence, Set

import numpy as np

from gemini.data import decontaminate as dc
from gemini.data import pipeline, sources

_WORD = re.compile(r"\w+")   # decontaminate's word tokens
HELDOUT_PER_SOURCE = 8        # prepare's --heldout_per_source default


def training_docs(corpus_dir: str = "", max_bytes: int = 1 << 20) -> Iterable[Dict[str, str]]:
  """The training corpus' documents: DIR/docs/*.jsonl of a prepared corpus minus its
  DIR/heldout/heldout.jsonl, or else the bundled sources read directly with prepare's cap,
  held-out split and held-out decontamination (sources that need a download are skipped;
  prepare's quality filters and dedup are not re-applied, so this is a superset)."""
  files = sorted(glob.glob(os.path.join(corpus_dir, "docs", "*.jsonl"))) if corpus_dir else []
  if files:
    held = set()
    path = os.path.join(corpus_dir, "heldout", "heldout.jsonl")
    if os.path.exists(path):
      with open(path) as fh:
        held = {json.loads(line)["id"] for line in fh}
    for f in files:
      with open(f) as fh:
        for line in fh:
          d = json.loads(line)
          if d["id"] not in held:
            yield d
    return
  docs = {}
  for name, read in sources.TEXT_SOURCES.items():
    if name == "shakespeare":
      continue
    try:
      docs[name] = read(max_bytes)
    except sources.SourceUnavailable:
      continue
  train, heldout = pipeline.split_heldout(docs, HELDOUT_PER_SOURCE)
  index = dc.NgramIndex(heldout)      # prepare removes training docs overlapping held-out ones
  for ds in train.values():
    yield from dc.decontaminate(ds, index)[0]


def contaminated(items: Sequence[Dict[str, str]], train: Iterable[Dict[str, str]], n: int = 13
                 ) -> Dict[str, object]:
  """items: [{'id', 'text'}] -> {'contaminated': sorted ids, 'too_short': count, 'n': n,
  'train_docs': count, 'fraction': contaminated / len(items)}."""
  index = dc.NgramIndex(items, n)
  hit: Set[str] = set()
  count = 0
  for d in train:
    count += 1
    hit.update(index.hits(d["text"]))
  short = sum(1 for it in items if len(_WORD.findall(it["text"].lower())) < n)
  return {"n": n, "items": len(items), "train_docs": count, "contaminated": sorted(hit),
          "too_short": short, "fraction": len(hit) / max(1, len(items))}


def duplicate_arrays(test: np.ndarray, train: np.ndarray) -> List[int]:
  """Indices of test rows that equal some training row exactly (byte hashes)."""
  seen = {hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()
          for x in train}
  return [i for i, x in enumerate(test)
          if hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest() in seen]
