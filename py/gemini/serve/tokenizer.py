"""One tokenizer face for serving: SentencePiece models trained here and GGUF byte-level BPE.

Each gives encode (special tokens such as `<think>` or `<|im_start|>` parsed atomically),
decode, the stop ids, the thinking specials (None where the vocabulary has none), the chat
rendering and the raw bytes of every token (what a grammar engine needs to build token masks).
"""

from __future__ import annotations

import abc
import json
import re
from typing import Dict, List, Optional, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_model_pb2

from gemini.checkpoints import gguf
from gemini.data import tokenizer as sp_tokenizer


def _gpt2_byte_decoder() -> Dict[str, int]:
  """Byte-level BPE's printable stand-in character -> the byte it encodes: bytes that are
  printable Latin-1 map to themselves, the other 68 to U+0100 upwards in byte order."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  out, extra = {}, 0
  for b in range(256):
    if b in keep:
      out[chr(b)] = b
    else:
      out[chr(256 + extra)] = b
      extra += 1
  return out


class ServeTokenizer(abc.ABC):
  """Interface; see the module docstring."""
  vocab_size: int
  eos_ids: frozenset
  bos_id: Optional[int]
  think_open: Optional[int] = None
  think_close: Optional[int] = None
  tool_open: str = "<tool_call>"
  tool_close: str = "</tool_call>"

  @abc.abstractmethod
  def encode(self, text: str) -> List[int]:
    """Implemented by each tokenizer kind."""

  def encode_continuation(self, text: str) -> List[int]:
    """Tokens of text that continues earlier text (no leading-space marker added)."""
    return self.encode(text)

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Implemented by each tokenizer kind."""

  @abc.abstractmethod
  def token_bytes(self) -> List[bytes]:
    """Implemented by each tokenizer kind."""

  @abc.abstractmethod
  def render_chat(self, messages: Sequence[Dict[str, str]], add_generation_prompt=True) -> str:
    """Implemented by each tokenizer kind."""

  def media_ids(self) -> Dict[str, int]:
    """Ids that mark a media item in a prompt, as the data pipeline lays it out:
    'start' + n x '<kind>' + 'end' (keys start, end, image, audio, video); {} if the
    vocabulary has none (the item's positions then hold id 0, which the encoder overwrites)."""
    return {}

  def llg_tokenizer(self):
    """llguidance.LLTokenizer over this vocabulary (built once, ~1 s for 50k tokens)."""
    import llguidance
    wrapper = _LLGWrapper(self)
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), n_vocab=self.vocab_size)


class _LLGWrapper:
  """The duck type llguidance.TokenizerWrapper reads; text is tokenized as a continuation
  (no SentencePiece dummy-prefix space)."""

  def __init__(self, tok: ServeTokenizer):
    self.tokens = tok.token_bytes()
    self.eos_token_id = min(tok.eos_ids)
    self.bos_token_id = tok.bos_id
    self.special_token_ids = sorted(tok.special_ids())
    self._encode = tok.encode_continuation

  def __call__(self, s):
    return self._encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s)


class SentencePieceTokenizer(ServeTokenizer):
  """gemini.data.tokenizer (SentencePiece + fixed specials); chat in the reports' turn format:
  <start_of_turn>{role}\\n{text}<end_of_turn>\\n, the model's turn ends at <end_of_turn>."""

  def __init__(self, path: str = "", *, model_proto: bytes = b"", where: str = ""):
    self.tok = sp_tokenizer.Tokenizer(path, model_proto=model_proto, where=where)
    self.vocab_size = self.tok.vocab_size
    self.bos_id = sp_tokenizer.BOS
    self.eos_ids = frozenset({sp_tokenizer.EOS, sp_tokenizer.special_id("<end_of_turn>")})
    self.think_open = sp_tokenizer.special_id("<think>")
    self.think_close = sp_tokenizer.special_id("</think>")
    self._specials = {s: sp_tokenizer.special_id(s) for s in sp_tokenizer.SPECIALS}
    self._names = {v: k for k, v in self._specials.items()}   # id -> special text (decode)
    self._split = re.compile("(" + "|".join(re.escape(s) for s in self._specials) + ")")
    proto = sp_model_pb2.ModelProto()
    proto.ParseFromString(self.tok.sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    self._sp_cont = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

  def encode_continuation(self, text: str) -> List[int]:
    return self._sp_cont.encode(text)

  def media_ids(self) -> Dict[str, int]:
    names = {"start": "<media_start>", "end": "<media_end>", "image": "<image>",
             "audio": "<audio>", "video": "<video>"}
    return {k: self._specials[v] for k, v in names.items()}

  def special_ids(self):
    return set(self._specials.values()) | {0, 1, 2, 3}

  def encode(self, text: str) -> List[int]:
    out = []
    for part in self._split.split(text):
      if part in self._specials:
        out.append(self._specials[part])
      elif part:
        out += self.tok.sp.encode(part)
    return out

  def decode(self, ids: Sequence[int]) -> str:
    out, run = [], []
    inv = self._names
    for i in ids:
      i = int(i)
      if i in inv:
        out.append(self.tok.sp.decode(run))
        run = []
        out.append(inv[i])
      elif i not in (0, 2, 3):
        run.append(i)
    out.append(self.tok.sp.decode(run))
    return "".join(out)

  def token_bytes(self) -> List[bytes]:
    sp = self.tok.sp
    out = []
    for i in range(self.vocab_size):
      piece = sp.id_to_piece(i)
      if sp.is_byte(i):
        out.append(bytes([int(piece[3:5], 16)]))
      elif sp.is_control(i) or sp.is_unknown(i) or i in self.special_ids():
        out.append(piece.encode())
      else:
        out.append(piece.replace("\u2581", " ").encode())
    return out

  def render_chat(self, messages, add_generation_prompt=True) -> str:
    out = []
    for m in messages:
      role = {"assistant": "model"}.get(m["role"], m["role"])
      out.append(f"<start_of_turn>{role}\n{m['content']}<end_of_turn>\n")
    if add_generation_prompt:
      out.append("<start_of_turn>model\n")
    return "".join(out)


class BPETokenizer(ServeTokenizer):
  """A GGUF byte-level BPE (tokenizers.Tokenizer from gemini.checkpoints.gguf) with its ChatML
  template; the model's turn ends at <|im_end|>."""

  def __init__(self, tok, chat_template: str, bos_id: int, eos_id: int):
    self.tok, self.template, self._gguf = tok, chat_template, gguf
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = None  # ChatML prompts carry no BOS (llama.cpp's add_bos is false for SmolLM2)
    ends = {eos_id}
    im_end = tok.token_to_id("<|im_end|>")
    if im_end is not None:
      ends.add(im_end)
    self.eos_ids = frozenset(ends)
    self.think_open = tok.token_to_id("<think>")
    self.think_close = tok.token_to_id("</think>")
    if self.think_open is None or self.think_close is None:
      self.think_open = self.think_close = None

  def special_ids(self):
    return set(self.tok.get_added_tokens_decoder())

  def encode(self, text: str) -> List[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def token_bytes(self) -> List[bytes]:
    table = _gpt2_byte_decoder()
    special = self.special_ids()
    out = []
    for i in range(self.vocab_size):
      s = self.tok.id_to_token(i) or ""
      if i in special or any(c not in table for c in s):
        out.append(s.encode())
      else:
        out.append(bytes(table[c] for c in s))
    return out

  def llg_tokenizer(self):
    import llguidance
    return llguidance.LLTokenizer(self.tok.to_str(), n_vocab=self.vocab_size,
                                  eos_token=sorted(self.eos_ids))

  def render_chat(self, messages, add_generation_prompt=True) -> str:
    return self._gguf.apply_chat_template(self.template, messages, add_generation_prompt)


def tool_prompt(tools: Sequence[dict]) -> str:
  """System-prompt text declaring tools (name, description, JSON-schema parameters) and the
  call format the engine parses."""
  decl = json.dumps([{"name": t["name"], "description": t.get("description", ""),
                      "parameters": t.get("parameters", {})} for t in tools])
  return ("You can call these tools: " + decl + "\nTo call one, answer with "
          "<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.")
