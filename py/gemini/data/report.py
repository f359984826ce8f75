"""Filter / dedup / decontamination report on the bundled corpus, with planted test cases.

  tools/bazel run //py/gemini/data:report -- [--corpus=DIR (a prepare output)] [--planted=12]

Prints documents in/out per filter rule and source, exact duplicates, near-duplicate pairs
(the corpus's own plus `planted` lightly edited copies, all of which must be found), and
13-gram hits against the held-out split after planting `planted` held-out passages into
training documents (all must be found). Exits 1 if a planted case is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from typing import Dict, List

from gemini.data import decontaminate, dedup, filters, pipeline, sources


def _words(text):
  return re.findall(r"\S+", text)


def run_report(docs_by_source: Dict[str, List[dict]], heldout_per_source: int = 8,
               planted: int = 12, seed: int = 0) -> dict:
  rng = random.Random(seed)
  train, heldout = pipeline.split_heldout(docs_by_source, heldout_per_source)
  rows, kept = {}, []
  for src, docs in train.items():
    k, counts = filters.apply_filters(docs)
    rows[src] = dict(counts, docs_in=len(docs), docs_out=len(k))
    kept += k
  kept, n_exact = dedup.exact_dedup(kept)

  # Planted near-duplicates: copies of long documents with 1% of words replaced (each
  # replaced word changes 5 shingles: Jaccard ~0.9).
  long_docs = [d for d in kept if len(_words(d["text"])) >= 200]
  planted_near = []
  for i, d in enumerate(rng.sample(long_docs, min(planted, len(long_docs)))):
    w = _words(d["text"])
    for _ in range(max(1, len(w) // 100)):
      w[rng.randrange(len(w))] = "zzplanted"
    copy = {"id": f"planted-near:{i}:{d['id']}", "source": d["source"], "text": " ".join(w)}
    kept.append(copy)
    planted_near.append((d["id"], copy["id"]))
  before = kept
  kept, pairs = dedup.near_dedup(kept)
  found_pairs = {(before[i]["id"], before[j]["id"]) for i, j, _ in pairs}
  near_found = sum(p in found_pairs for p in planted_near)

  # Planted contamination: a 20-word passage of a held-out doc spliced into a training doc.
  donors = [h for h in heldout if len(_words(h["text"])) >= 40]
  targets = rng.sample(range(len(kept)), min(planted, len(donors), len(kept)))
  planted_cont = {}
  for t, h in zip(targets, rng.sample(donors, len(targets))):
    hw = _words(h["text"])
    start = rng.randrange(len(hw) - 20)
    tw = _words(kept[t]["text"])
    at = rng.randrange(len(tw) + 1)
    kept[t] = dict(kept[t], text=" ".join(tw[:at] + hw[start:start + 20] + tw[at:]))
    planted_cont[kept[t]["id"]] = h["id"]
  index = decontaminate.NgramIndex(heldout)
  clean, hits = decontaminate.decontaminate(kept, index)
  hit_map = dict(hits)
  cont_found = sum(h in hit_map.get(t, []) for t, h in planted_cont.items())
  return {"rows": rows, "exact_duplicates": n_exact, "near_pairs": pairs and [
      (before[i]["id"], before[j]["id"], round(jac, 3)) for i, j, jac in pairs],
          "near_planted": len(planted_near), "near_planted_found": near_found,
          "heldout_docs": len(heldout), "ngrams_indexed": len(index.owner),
          "contaminated": hits, "cont_planted": len(planted_cont), "cont_planted_found": cont_found,
          "cont_planted_ids": sorted(planted_cont),
          "docs_out": len(clean)}


def print_report(r: dict) -> None:
  cols = ("docs_in",) + filters.RULES + ("docs_out",)
  print(f"{'source':<12}" + "".join(f"{c:>13}" for c in cols))
  for src, row in r["rows"].items():
    print(f"{src:<12}" + "".join(f"{row[c]:>13}" for c in cols))
  tot = {c: sum(row[c] for row in r["rows"].values()) for c in cols}
  print(f"{'total':<12}" + "".join(f"{tot[c]:>13}" for c in cols))
  print(f"exact duplicates removed: {r['exact_duplicates']}")
  pairs = r["near_pairs"] or []
  own = [p for p in pairs if not p[1].startswith("planted-near")]
  print(f"near-duplicate pairs (MinHash-LSH, Jaccard >= 0.8): {len(pairs)} "
        f"({len(own)} in the corpus itself); planted {r['near_planted_found']}/{r['near_planted']}"
        f" found")
  for a, b, j in own[:8]:
    print(f"    {j:.3f}  {a}  ~  {b}")
  print(f"decontamination: {r['heldout_docs']} held-out docs, {r['ngrams_indexed']} 13-grams; "
        f"{len(r['contaminated'])} training docs hit; planted overlaps "
        f"{r['cont_planted_found']}/{r['cont_planted']} found")
  planted = set(r["cont_planted_ids"])
  natural = [(t, hs) for t, hs in r["contaminated"] if t not in planted]
  print(f"    {len(natural)} natural hits (the rest are the planted ones):")
  for t, hs in natural[:8]:
    print(f"    {t}  <-  {', '.join(hs)}")
  print(f"documents after the pipeline: {r['docs_out']}")


def main(argv):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--corpus", default="", help="a prepare --out dir (reads its docs/*.jsonl)")
  p.add_argument("--sources", default="bible,gcide,wordnet,fortunes,code",
                 help="without --corpus: sources read directly")
  p.add_argument("--max_mb_per_source", type=float, default=0.5)
  p.add_argument("--planted", type=int, default=12)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  docs = {}
  if a.corpus:
    base = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
    root = os.path.join(base, a.corpus, "docs")
    for f in sorted(os.listdir(root)):
      with open(os.path.join(root, f), encoding="utf-8") as fh:
        docs[f[:-len(".jsonl")]] = [json.loads(l) for l in fh if l.strip()]
  else:
    for s in a.sources.split(","):
      docs[s] = sources.TEXT_SOURCES[s](int(a.max_mb_per_source * (1 << 20)))
  r = run_report(docs, planted=a.planted, seed=a.seed)
  print_report(r)
  ok = r["near_planted_found"] == r["near_planted"] and \
      r["cont_planted_found"] == r["cont_planted"]
  print("all planted cases found" if ok else "MISSED planted cases")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
