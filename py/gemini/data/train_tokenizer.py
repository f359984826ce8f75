"""Trains the SentencePiece tokenizer on jsonl documents (a `prepare` output's clean/*.jsonl).

  tools/bazel run //py/gemini/data:train_tokenizer -- --input=DIR/clean/bible.jsonl,... \
      --out=DIR/tokenizer --vocab_size=8192 --character_coverage=0.9995 --byte_fallback=true
"""

import argparse
import json
import os
import sys

from gemini.data import tokenizer


def main(argv):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--input", required=True, help="comma list of .jsonl files ({'text': ...})")
  p.add_argument("--out", required=True)
  p.add_argument("--vocab_size", type=int, default=8192)
  p.add_argument("--character_coverage", type=float, default=0.9995)
  p.add_argument("--byte_fallback", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
  p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
  p.add_argument("--max_sentences", type=int, default=300_000)
  a = p.parse_args(argv)
  base = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
  texts = []
  for path in a.input.split(","):
    with open(os.path.join(base, path), encoding="utf-8") as f:
      texts += [json.loads(line)["text"] for line in f if line.strip()]
  model = tokenizer.train(texts, os.path.join(base, a.out), a.vocab_size, a.character_coverage,
                          a.byte_fallback, a.model_type, a.max_sentences)
  tok = tokenizer.Tokenizer(model)
  sample = texts[0][:80] if texts else ""
  print(f"[train_tokenizer] {model}: vocab {tok.vocab_size}; specials "
        f"{ {s: tok.special(s) for s in tokenizer.SPECIALS} }")
  print(f"[train_tokenizer] {sample!r} -> {tok.encode(sample)[:24]}")


if __name__ == "__main__":
  main(sys.argv[1:])
