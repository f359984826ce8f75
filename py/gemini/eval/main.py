"""Harness CLI: tools/bazel run //py/gemini/eval -- --model=gguf:smollm2 --tasks=wordnet_mc,ppl

Writes OUT/results.jsonl (one summary line per task, appended), OUT/<task>.records.jsonl,
OUT/results.md (Markdown table of every summary line) and prints each summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported (no TPU probing)

from gemini.eval import decontam, models, report, suite


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", required=True, help="gguf:smollm2 | checkpoint:DIR | npz:PATH | "
                 "random:CONFIG | native:smollm2 | native:FILE.gnb (models.py)")
  p.add_argument("--tasks", default="wordnet_mc,ppl", help=f"comma list of {sorted(suite.TASKS)}")
  p.add_argument("--config", default="", help="preset of a checkpoint/npz model")
  p.add_argument("--tokenizer", default="", help="SentencePiece model of a checkpoint/npz model")
  p.add_argument("--limit", type=int, default=0, help="items per task (0 = task default / all)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--max_len", type=int, default=0, help="context window (0 = model's max)")
  p.add_argument("--n", type=int, default=1, help="humaneval samples per problem")
  p.add_argument("--temperature", type=float, default=0.0, help="humaneval sampling")
  p.add_argument("--max_gen_toks", type=int, default=256)
  p.add_argument("--prompt_style", default="raw", choices=("raw", "strip", "chat"),
                 help="humaneval: the bare prompt, without its trailing whitespace, or in the "
                 "model's chat template (humaneval.py)")
  p.add_argument("--no_bos_in_generation", action="store_true", help="generate_until "
                 "contexts without the BOS prefix (loglikelihood keeps it)")
  p.add_argument("--corpus_dir", default="", help="prepared corpus for decontamination "
                 "(default: the bundled sources read directly)")
  p.add_argument("--no_decontam", action="store_true")
  p.add_argument("--out", default="/tmp/gemini-eval")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(sys.argv[1:] if argv is None else argv)
  names = [t for t in a.tasks.split(",") if t]
  unknown = [t for t in names if t not in suite.TASKS]
  if unknown:
    raise SystemExit(f"--tasks: unknown {unknown}; known: {sorted(suite.TASKS)}")
  os.makedirs(a.out, exist_ok=True)
  t0 = time.perf_counter()
  lm = models.load_model(a.model, config=a.config, tokenizer=a.tokenizer,
                         batch_size=a.n if "humaneval" in names and a.n > 1 else a.batch_size,
                         max_len=a.max_len or None,
                         bos_in_generation=not a.no_bos_in_generation)
  print(f"model {a.model}: {lm.describe()} (loaded in {time.perf_counter() - t0:.1f}s)",
        flush=True)
  tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", a.model)
  for name in names:
    t = time.perf_counter()
    kw = {"samples_path": os.path.join(a.out, f"{tag}.{name}.samples.jsonl"), "n": a.n,
          "temperature": a.temperature, "max_gen_toks": a.max_gen_toks,
          "prompt_style": a.prompt_style}
    if a.limit:
      kw["limit"] = a.limit
    out = suite.TASKS[name](lm, **kw)
    bad = []
    if not a.no_decontam:
      c = decontam.contaminated(out["items"], decontam.training_docs(a.corpus_dir))
      bad = c["contaminated"]
    summary = dict(model=a.model, **suite.summarise(name, out, bad))
    summary["seconds"] = round(time.perf_counter() - t, 1)
    with open(os.path.join(a.out, f"{tag}.{name}.records.jsonl"), "w") as f:
      for r in out["records"]:
        f.write(json.dumps(r) + "\n")
    with open(os.path.join(a.out, "results.jsonl"), "a") as f:
      f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)
  report.write_table(os.path.join(a.out, "results.jsonl"), os.path.join(a.out, "results.md"))


if __name__ == "__main__":
  main()
