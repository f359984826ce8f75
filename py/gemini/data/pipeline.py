"""The corpus cleaning pipeline shared by `prepare` and `report`: held-out split, quality
filters, exact + near dedup, decontamination against the held-out split."""

from __future__ import annotations

import hashlib
import re
from typing import Dict, List, Sequence, Tuple

from gemini.data import decontaminate, dedup, filters

Doc = Dict[str, str]


def split_heldout(docs_by_source: Dict[str, List[Doc]], per_source: int, n: int = 13
                  ) -> Tuple[Dict[str, List[Doc]], List[Doc]]:
  """Moves `per_source` documents of each source (those with >= n words whose id hashes
  lowest: deterministic, independent of order) into the held-out split."""
  train, heldout = {}, []
  for src, docs in docs_by_source.items():
    eligible = [d for d in docs if len(re.findall(r"\w+", d["text"])) >= n]
    eligible.sort(key=lambda d: hashlib.sha1(d["id"].encode()).digest())
    # Never take more than a tenth of a source.
    chosen = {d["id"] for d in eligible[:min(per_source, len(docs) // 10)]}
    heldout += [d for d in docs if d["id"] in chosen]
    train[src] = [d for d in docs if d["id"] not in chosen]
  return train, heldout


def clean(train_by_source: Dict[str, List[Doc]], heldout: Sequence[Doc],
          cfg: filters.FilterConfig = filters.FilterConfig(), log=print
          ) -> Tuple[Dict[str, List[Doc]], dict]:
  """(clean documents per source, stats). Order: filters per source, exact dedup, near dedup
  (both across all sources), 13-gram decontamination against `heldout`."""
  stats = {"docs_in": {s: len(d) for s, d in train_by_source.items()}, "filters": {}}
  kept: List[Doc] = []
  for src, docs in train_by_source.items():
    k, counts = filters.apply_filters(docs, cfg)
    stats["filters"][src] = counts
    kept += k
  log(f"  filters: {sum(stats['docs_in'].values())} -> {len(kept)} docs")
  kept, stats["exact_duplicates"] = dedup.exact_dedup(kept)
  log(f"  exact dedup: removed {stats['exact_duplicates']}")
  kept_before = kept
  kept, pairs = dedup.near_dedup(kept)
  stats["near_duplicate_pairs"] = [(kept_before[i]["id"], kept_before[j]["id"], round(jac, 3))
                                   for i, j, jac in pairs]
  stats["near_duplicates_removed"] = len(kept_before) - len(kept)
  log(f"  near dedup: {len(pairs)} pairs, removed {stats['near_duplicates_removed']}")
  index = decontaminate.NgramIndex(heldout)
  kept, hits = decontaminate.decontaminate(kept, index)
  stats["contaminated"] = hits
  log(f"  decontamination: {len(hits)} training docs share a 13-gram with the held-out split")
  out = {s: [] for s in train_by_source}
  for d in kept:
    out[d["source"]].append(d)
  stats["docs_out"] = {s: len(d) for s, d in out.items()}
  return out, stats
