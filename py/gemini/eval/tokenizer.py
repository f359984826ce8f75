"""One text-tokenizer face over our SentencePiece model and the GGUF byte-level BPE.

    encode(text) -> [ids] (no BOS/EOS)      decode(ids) -> text      bos_id / eos_id (or None)

and over the tokenizer inside a .gnb, run by the native runtime (RuntimeText).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from gemini.data import tokenizer as tok_lib


class SentencePieceText:
  """gemini.data.tokenizer.Tokenizer (the corpus tokenizer of our checkpoints)."""

  def __init__(self, path: str = "", *, model_proto: bytes = b"", where: str = ""):
    self.tok = tok_lib.Tokenizer(path, model_proto=model_proto, where=where)
    self.bos_id: Optional[int] = tok_lib.BOS
    self.eos_id: Optional[int] = tok_lib.EOS
    self.vocab_size = self.tok.vocab_size

  def encode(self, text: str) -> List[int]:
    return self.tok.encode(text, bos=False, eos=False)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode(ids)


class HFText:
  """A tokenizers.Tokenizer (the GGUF import's byte-level BPE)."""

  def __init__(self, tok, bos_id: Optional[int], eos_id: Optional[int]):
    self.tok, self.bos_id, self.eos_id = tok, bos_id, eos_id
    self.vocab_size = tok.get_vocab_size()

  def encode(self, text: str) -> List[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


class RuntimeText:
  """The tokenizer stored in a .gnb (SentencePiece or byte-level BPE), through the native
  runtime's encode/decode; BOS is the file's bos_id when the file asks for one (add_bos)."""

  def __init__(self, rt):
    c = rt.config
    self.rt = rt
    self.bos_id: Optional[int] = int(c["bos_id"]) if c["add_bos"] else None
    self.eos_id: Optional[int] = int(c["eos_id"]) if int(c["eos_id"]) >= 0 else None
    self.vocab_size = int(c["vocab_size"])

  def encode(self, text: str) -> List[int]:
    return list(self.rt.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    keep = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id)]
    return bytes(self.rt.decode(keep)).decode("utf-8", "replace")


class WordVocab:
  """A closed word-level vocabulary for synthetic tasks: id 0 pad, 1 bos, 2 eos, then words.

  encode splits on whitespace; an unknown word is an error naming it."""

  def __init__(self, words: Sequence[str]):
    self.words = ["<pad>", "<bos>", "<eos>"] + list(dict.fromkeys(words))
    self.index = {w: i for i, w in enumerate(self.words)}
    self.bos_id, self.eos_id = 1, 2
    self.vocab_size = len(self.words)

  def encode(self, text: str) -> List[int]:
    out = []
    for w in text.split():
      if w not in self.index:
        raise ValueError(f"WordVocab: word {w!r} is not in the vocabulary")
      out.append(self.index[w])
    return out

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(self.words[int(i)] for i in ids if int(i) > 2)
