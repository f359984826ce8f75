"""Batched generation with stop strings over the model's KV-cache decode.

Prompts of a batch are left-padded (segment id 0) so every row's last prompt token is in the
last column; one prefill, then one jitted (sample + decode step) per new token for the whole
batch. Every `check_every` steps the new tokens of each row are decoded and a row whose text
contains a stop string (or that produced EOS) is finished; generation stops when all rows are
finished or after max_new_tokens. The returned text is cut before the first stop string.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.model import decode


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "top_p"))
def _sample_step(params, logits, key, cache, cfg, temperature, top_p):
  tok = decode.sample(logits, key, temperature=temperature, top_p=top_p)
  logits, cache = decode.decode_step(params, tok, cache, cfg)
  return tok, logits, cache


def cut_at_stop(text: str, until: Sequence[str]) -> Optional[str]:
  """text before the earliest stop string, or None if none occurs."""
  best = None
  for s in until:
    j = text.find(s) if s else -1
    if j >= 0 and (best is None or j < best):
      best = j
  return None if best is None else text[:best]


def generate_batch(params, cfg: ModelConfig, tokenizer, prompts: Sequence[Sequence[int]],
                   until: Sequence[str], max_new_tokens: int, *, temperature: float = 0.0,
                   top_p: float = 1.0, key: Optional[jax.Array] = None,
                   check_every: int = 4, quantum: int = 32) -> List[str]:
  """prompts: token id lists (one per row) -> generated strings (stop strings removed)."""
  b = len(prompts)
  longest = max(len(p) for p in prompts)
  p_len = min(-(-longest // quantum) * quantum, cfg.max_seq_len - max_new_tokens)
  if longest > p_len:
    raise ValueError(f"generate: prompt of {longest} tokens + {max_new_tokens} new tokens "
                     f"exceeds max_seq_len={cfg.max_seq_len}")
  tok = np.zeros((b, p_len), np.int32)
  seg = np.zeros((b, p_len), np.int32)
  for r, p in enumerate(prompts):
    if p:
      tok[r, p_len - len(p):], seg[r, p_len - len(p):] = p, 1
  positions = np.maximum(np.cumsum(seg != 0, axis=1) - 1, 0).astype(np.int32)
  total = -(-(p_len + max_new_tokens) // quantum) * quantum
  cache = decode.init_cache(cfg, b, min(total, cfg.max_seq_len))
  logits, cache = decode.jit_prefill(params, {"tokens": tok, "segment_ids": seg,
                                              "positions": positions}, cache, cfg=cfg)
  logits = logits[:, -1]
  key = jax.random.key(0) if key is None else key
  new = np.zeros((b, 0), np.int32)
  done = np.zeros(b, bool)
  texts: List[Optional[str]] = [None] * b
  for step in range(max_new_tokens):
    t, logits, cache = _sample_step(params, logits, jax.random.fold_in(key, step), cache,
                                    cfg=cfg, temperature=float(temperature), top_p=float(top_p))
    new = np.concatenate([new, np.asarray(t)[:, None]], axis=1)
    if (step + 1) % check_every == 0 or step + 1 == max_new_tokens:
      for r in np.flatnonzero(~done):
        ids = new[r]
        if tokenizer.eos_id is not None and tokenizer.eos_id in ids:
          ids = ids[:int(np.argmax(ids == tokenizer.eos_id))]
          done[r] = True
        text = tokenizer.decode(ids)
        cut = cut_at_stop(text, until)
        if cut is not None:
          text, done[r] = cut, True
        texts[r] = text
      if done.all():
        break
  return [t if t is not None else "" for t in texts]
