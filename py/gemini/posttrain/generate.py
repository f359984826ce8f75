"""Batched chat-prompt generation with `gemini.model.decode` (greedy or sampled)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gemini.model import decode


def left_pad(prompts: Sequence[np.ndarray], length: int = 0):
  """-> (tokens int32 [B, P], segment_ids int32 [B, P]) left-padded with segment 0 to
  P = max(length, longest prompt)."""
  p = max([length] + [len(x) for x in prompts])
  toks = np.zeros((len(prompts), p), np.int32)
  seg = np.zeros((len(prompts), p), np.int32)
  for i, x in enumerate(prompts):
    toks[i, p - len(x):] = x
    seg[i, p - len(x):] = 1
  return toks, seg


def generate(params, cfg, prompts: Sequence[np.ndarray], max_new: int, stop_id: int, *,
             key: Optional[jax.Array] = None, temperature: float = 0.0,
             batch: int = 16, width: int = 0) -> List[np.ndarray]:
  """Completions (ids up to and including stop_id, or max_new ids) for each prompt. Prompts
  are left-padded to max(width, longest prompt): a fixed `width` keeps one compiled shape
  across calls (an RL step samples new prompts every step)."""
  out: List[np.ndarray] = []
  width = max([width] + [len(x) for x in prompts])        # one prompt shape for every batch
  for i in range(0, len(prompts), batch):
    chunk = list(prompts[i:i + batch])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch - n)                   # one compiled shape per call site
    toks, seg = left_pad(chunk, width)
    k = None if key is None else jax.random.fold_in(key, i)
    new = decode.generate(params, jnp.asarray(toks), cfg, max_new, key=k,
                          temperature=temperature, prompt_segment_ids=jnp.asarray(seg),
                          eos_id=stop_id)
    for row in np.asarray(new)[:n]:
      stop = np.where(row == stop_id)[0]
      out.append(row[:stop[0] + 1] if stop.size else row)
  return out
