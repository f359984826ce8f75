"""SentencePiece tokenizer (the reports' choice) with reserved special tokens.

Fixed ids: <pad>=0, <unk>=1, <bos>=2, <eos>=3, then SPECIALS in order (ids 4...). Specials mark
chat turns, thinking, tool calls and multimodal placeholders; they are user-defined symbols, so
they are never split and never produced from ordinary text.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, List, Sequence

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<think>", "</think>", "<tool_call>",
            "</tool_call>", "<tool_result>", "</tool_result>", "<image>", "<audio>", "<video>",
            "<media_start>", "<media_end>")


def special_id(name: str) -> int:
  """Id of a reserved special token (same in every model trained here)."""
  return {"<pad>": PAD, "<unk>": UNK, "<bos>": BOS, "<eos>": EOS,
          **{s: 4 + i for i, s in enumerate(SPECIALS)}}[name]


def _chunks(text: str, size: int = 1024) -> List[str]:
  out, cur = [], ""
  for line in text.splitlines(keepends=True):
    if cur and len(cur) + len(line) > size:
      out.append(cur)
      cur = ""
    cur += line
  return out + [cur] if cur else out


def train(texts: Iterable[str], out_dir: str, vocab_size: int = 8192,
          character_coverage: float = 0.9995, byte_fallback: bool = True,
          model_type: str = "unigram", max_sentences: int = 300_000,
          num_threads: int = 2) -> str:
  """Trains on `texts` (split into ~1 KB chunks of whole lines); returns the .model path."""
  os.makedirs(out_dir, exist_ok=True)
  # Chunks of whole lines (newlines kept) so "\n" and indentation become pieces, not bytes.
  lines = [c for t in texts for c in _chunks(t) if c.strip()]
  if not lines:
    raise ValueError("tokenizer.train: no text")
  if len(lines) > max_sentences:  # Deterministic, evenly spaced sample (SentencePiece's own
    step = len(lines) / max_sentences  # sampler is seeded from the clock).
    lines = [lines[int(i * step)] for i in range(max_sentences)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
      character_coverage=character_coverage, byte_fallback=byte_fallback,
      model_type=model_type, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
      pad_piece="<pad>", unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>",
      user_defined_symbols=list(SPECIALS), input_sentence_size=0,
      shuffle_input_sentence=False, seed_sentencepiece_size=200_000, num_threads=num_threads,
      max_sentence_length=16384, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
      normalization_rule_name="identity", minloglevel=2)
  path = os.path.join(out_dir, "spm.model")
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


class Tokenizer:
  """encode/decode with the fixed special ids."""

  def __init__(self, path: str = "", *, model_proto: bytes = b"", where: str = ""):
    """From a model file `path`, or from its bytes `model_proto` (as a checkpoint records
    them; `where` names their origin in errors)."""
    if model_proto:
      self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
      path = where or "<tokenizer bytes>"
    elif not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer model {path} not found (run //py/gemini/data:prepare)")
    else:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    for name in ("<pad>", "<unk>", "<bos>", "<eos>") + SPECIALS:
      got = self.sp.piece_to_id(name)
      if got != special_id(name):
        raise ValueError(f"{path}: special {name} has id {got}, expected {special_id(name)}")

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, text: str, bos: bool = True, eos: bool = True) -> List[int]:
    return ([BOS] if bos else []) + self.sp.encode(text) + ([EOS] if eos else [])

  def encode_batch(self, texts: Sequence[str], bos: bool = True, eos: bool = True
                   ) -> List[List[int]]:
    ids = self.sp.encode(list(texts), num_threads=2)
    return [([BOS] if bos else []) + x + ([EOS] if eos else []) for x in ids]

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids if int(i) not in (PAD, BOS, EOS)])

  def special(self, name: str) -> int:
    return special_id(name)
