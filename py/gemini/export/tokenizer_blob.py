"""Tokenizer sections of .gnb files (FORMAT.md): SentencePiece bytes or our byte-level BPE blob."""

from __future__ import annotations

import json
import struct
import sys
import unicodedata
from typing import List, Tuple

import sentencepiece as spm

from gemini.export import gnb


def _ranges(pred) -> List[Tuple[int, int]]:
  out, start = [], None
  for cp in range(sys.maxunicode + 2):
    inside = cp <= sys.maxunicode and pred(chr(cp))
    if inside and start is None:
      start = cp
    elif not inside and start is not None:
      out.append((start, cp - 1))
      start = None
  return out


def unicode_tables() -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
  """Inclusive code point ranges of \\p{L} and \\p{N} from this Python's unicodedata."""
  cat = unicodedata.category
  return _ranges(lambda c: cat(c)[0] == "L"), _ranges(lambda c: cat(c)[0] == "N")


def bpe_blob(tokenizer) -> bytes:
  """A `tokenizers.Tokenizer` with a byte-level BPE model -> the kind-2 blob.

  Reads vocab, merges, added (special) tokens and whether a Digits(individual_digits)
  pre-tokenizer runs first, from the tokenizer's JSON."""
  spec = json.loads(tokenizer.to_str())
  model = spec["model"]
  if model.get("type") != "BPE":
    raise ValueError(f"bpe_blob: tokenizer model type {model.get('type')!r} is not BPE")
  vocab = model["vocab"]
  by_id = sorted(vocab.items(), key=lambda kv: kv[1])
  if [i for _, i in by_id] != list(range(len(by_id))):
    raise ValueError("bpe_blob: vocabulary ids are not 0..n-1")
  out = [struct.pack("<I", len(by_id))]
  for tok, _ in by_id:
    b = tok.encode()
    out.append(struct.pack("<H", len(b)) + b)
  merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
  out.append(struct.pack("<I", len(merges)))
  out += [struct.pack("<II", vocab[a], vocab[b]) for a, b in merges]
  specials = [t["id"] for t in spec.get("added_tokens", [])]
  out.append(struct.pack("<I", len(specials)) + b"".join(struct.pack("<I", i) for i in specials))
  pre = json.dumps(spec.get("pre_tokenizer"))
  split_digits = '"Digits"' in pre and '"individual_digits": true' in pre
  out.append(struct.pack("<I", 1 if split_digits else 0))
  letters, numbers = unicode_tables()
  for table in (letters, numbers):
    out.append(struct.pack("<I", len(table)) + b"".join(struct.pack("<II", lo, hi) for lo, hi in table))
  return b"".join(out)


def sentencepiece_section(model_path: str) -> Tuple[int, bytes]:
  """(kind, bytes) of a SentencePiece model file (validated by loading it)."""
  with open(model_path, "rb") as f:
    data = f.read()
  spm.SentencePieceProcessor(model_proto=data)
  return gnb.TOK_SENTENCEPIECE, data
