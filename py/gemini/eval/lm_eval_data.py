"""Writes the local lm-eval task's items (lm_eval_tasks/gemini_wordnet_mc.jsonl)."""

import json
import os
import sys

from gemini.eval import suite


def main(out: str = os.path.join(os.path.dirname(__file__), "lm_eval_tasks",
                                 "gemini_wordnet_mc.jsonl"), n: int = 40):
  with open(out, "w") as f:
    for it in suite.wordnet_items(n, seed=1):
      f.write(json.dumps({k: it[k] for k in ("context", "choices", "gold")}) + "\n")
  print(f"wrote {n} items to {out}")


if __name__ == "__main__":
  main(*sys.argv[1:2])
