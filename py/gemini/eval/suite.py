"""Harness tasks on local data: each returns per-item records and summary metrics.

    wordnet_mc   WordNet (Debian wordnet-base) noun glosses, 4-way multiple choice:
                 "<lemma> means" -> the right gloss among 3 others (acc, acc_norm)
    ppl          perplexity of held-out documents of the bundled text sources, per source
                 (nats/token and bits/byte)
    humaneval    HumanEval pass@1 / pass@k in the sandbox (see humaneval.py)
Every task also reports the 13-gram contamination of its items by the training corpus and
its metric on the clean subset.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List

import numpy as np

from gemini.data import pipeline, sources
from gemini.eval import decontam, humaneval, metrics
from gemini.eval.requests import Loglikelihood, LoglikelihoodRolling


def wordnet_items(limit: int, seed: int = 0, root: str = "/usr/share/wordnet") -> List[Dict]:
  docs = sources.wordnet(0, root=root, group=1)
  nouns = [d["text"] for d in docs if d["id"].startswith("wordnet:noun")]
  rng = random.Random(seed)
  picks = rng.sample(range(len(nouns)), min(limit, len(nouns)))
  items = []
  for k, i in enumerate(picks):
    lemmas, gloss = nouns[i].split(": ", 1)
    gloss = gloss.split(";")[0].strip()
    others = []
    while len(others) < 3:
      j = rng.randrange(len(nouns))
      if j != i:
        others.append(nouns[j].split(": ", 1)[1].split(";")[0].strip())
    gold = rng.randrange(4)
    choices = others[:gold] + [gloss] + others[gold:]
    items.append({"id": f"wordnet_mc:{k}", "context": f"{lemmas.split(', ')[0]} means",
                  "choices": [" " + c for c in choices], "gold": gold,
                  "text": f"{lemmas}: {gloss}"})
  return items


def run_wordnet_mc(lm, limit: int = 200, **_) -> Dict:
  items = wordnet_items(limit)
  reqs = [Loglikelihood(it["context"], c) for it in items for c in it["choices"]]
  lps = [lp for lp, _ in lm.loglikelihood(reqs)]
  records = []
  for k, it in enumerate(items):
    m = metrics.multiple_choice(lps[4 * k:4 * k + 4], it["choices"], it["gold"])
    records.append({"id": it["id"], **m})
  return {"items": items, "records": records, "metric_keys": ("acc", "acc_norm")}


def heldout_docs(per_source: int = decontam.HELDOUT_PER_SOURCE, max_bytes: int = 1 << 20
                 ) -> List[Dict]:
  """prepare's held-out split (same selection rule and cap) of the sources readable here."""
  docs = {}
  for name, read in sources.TEXT_SOURCES.items():
    if name == "shakespeare":
      continue
    try:
      docs[name] = read(max_bytes)
    except sources.SourceUnavailable:
      continue
  return pipeline.split_heldout(docs, per_source)[1]


def run_ppl(lm, limit: int = 0, max_chars: int = 2000, **_) -> Dict:
  """prepare's held-out documents (first max_chars characters each; limit per source)."""
  docs = heldout_docs()
  if limit:
    by = {}
    docs = [d for d in docs if by.setdefault(d["source"], []).append(d) or
            len(by[d["source"]]) <= limit]
  docs = [dict(d, text=d["text"][:max_chars]) for d in docs]
  scores = lm.rolling_scores([LoglikelihoodRolling(d["text"]) for d in docs])
  records = [{"id": d["id"], "source": d["source"], "logprob": lp, "tokens": n,
              "bytes": len(d["text"].encode("utf-8"))} for d, (lp, n) in zip(docs, scores)]
  return {"items": docs, "records": records, "group_by": "source"}


def run_humaneval(lm, limit: int = 0, n: int = 1, temperature: float = 0.0,
                  max_gen_toks: int = 256, samples_path: str = "", prompt_style: str = "raw",
                  log=print, **_) -> Dict:
  probs = humaneval.load_problems(limit)
  res = humaneval.evaluate(lm, probs, n=n, temperature=temperature, max_gen_toks=max_gen_toks,
                           samples_path=samples_path, prompt_style=prompt_style, log=log)
  per = res.pop("per_problem_passed")
  records = [{"id": p["task_id"], "passed": per[p["task_id"]], "n": n} for p in probs]
  items = [{"id": p["task_id"], "text": p["prompt"] + p["canonical_solution"]} for p in probs]
  return {"items": items, "records": records, "summary": res}


TASKS: Dict[str, Callable] = {"wordnet_mc": run_wordnet_mc, "ppl": run_ppl,
                              "humaneval": run_humaneval}


def summarise(name: str, out: Dict, contaminated_ids=()) -> Dict[str, object]:
  """Task-level metrics over all items and over the clean (uncontaminated) subset."""
  bad = set(contaminated_ids)
  recs = out["records"]
  clean = [r for r in recs if r["id"] not in bad]
  summary = {"task": name, "items": len(recs), "contaminated": len(recs) - len(clean)}
  if name == "ppl":
    for label, rs in (("", recs), ("clean_", clean)):
      if not rs:
        continue
      p = _ppl(rs)
      summary.update({label + k: v for k, v in p.items()})
      if not label:
        for src in sorted({r["source"] for r in rs}):
          s = _ppl([r for r in rs if r["source"] == src])
          summary[f"{src}/nats_per_token"] = s["nats_per_token"]
          summary[f"{src}/bits_per_byte"] = s["bits_per_byte"]
  elif name == "humaneval":
    summary.update(out["summary"])
    n = out["summary"]["n"]
    for k in (1, 10):
      if k <= n and clean:
        summary[f"clean_pass@{k}"] = float(np.mean([metrics.pass_at_k(n, r["passed"], k)
                                                     for r in clean]))
  else:
    for key in out["metric_keys"]:
      summary[key] = float(np.mean([r[key] for r in recs]))
      if clean:
        summary["clean_" + key] = float(np.mean([r[key] for r in clean]))
  return summary


def _ppl(rs):
  nll = -sum(r["logprob"] for r in rs)
  tok, nbytes = sum(r["tokens"] for r in rs), sum(r["bytes"] for r in rs)
  return {"nats_per_token": nll / tok, "bits_per_byte": nll / (np.log(2) * nbytes)}
