"""Batched teacher-forced scoring: per-token log-probabilities of given targets.

A scoring item is (inputs [n], targets [n], mask [n]) with targets[i] the token that follows
inputs[:i+1]; only masked positions count. Items are grouped into batches of rows padded on
the right (segment id 0 on padding) to a bucketed length, so a few shapes are compiled:

    rows [B, S] ─transformer.forward─▶ logits [B,S,V] ─log_softmax, gather targets─▶
        logp [B,S], greedy [B,S] (argmax == target) ─host: masked sums per item─▶
        (sum logp, all greedy, number of tokens)
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.model import transformer


class Item(NamedTuple):
  inputs: Sequence[int]
  targets: Sequence[int]
  mask: Sequence[int]


class Score(NamedTuple):
  logprob: float      # sum over masked targets, nats
  greedy: bool        # every masked target is the argmax
  num_tokens: int


@functools.partial(jax.jit, static_argnames=("cfg",))
def token_logprobs(params, tokens, targets, segment_ids, cfg: ModelConfig):
  """tokens/targets/segment_ids int32 [B,S] -> (logp f32 [B,S], greedy bool [B,S])."""
  s = tokens.shape[1]
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), tokens.shape)
  logits, _ = transformer.forward(params, {"tokens": tokens, "segment_ids": segment_ids,
                                           "positions": positions}, cfg)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  greedy = jnp.argmax(logits, axis=-1) == targets
  return picked, greedy


def bucket(n: int, limit: int, quantum: int = 32) -> int:
  """Padded length for a row of n tokens: the next multiple of quantum (powers of 2 below
  it), at most limit."""
  if n <= quantum:
    b = 1
    while b < n:
      b *= 2
    return min(max(b, 8), limit)
  return min(-(-n // quantum) * quantum, limit)


def score_items(params, cfg: ModelConfig, items: Sequence[Item], batch_size: int = 8
                ) -> List[Score]:
  """Scores every item (in input order); longest first so batches have similar lengths."""
  for i, it in enumerate(items):
    if not len(it.inputs) == len(it.targets) == len(it.mask):
      raise ValueError(f"score_items: item {i} has inputs/targets/mask of lengths "
                       f"{len(it.inputs)}/{len(it.targets)}/{len(it.mask)}")
    if len(it.inputs) > cfg.max_seq_len:
      raise ValueError(f"score_items: item {i} has {len(it.inputs)} tokens > "
                       f"max_seq_len={cfg.max_seq_len}")
  order = sorted(range(len(items)), key=lambda i: -len(items[i].inputs))
  out: List[Score] = [None] * len(items)
  for lo in range(0, len(order), batch_size):
    idx = order[lo:lo + batch_size]
    s = bucket(len(items[idx[0]].inputs), cfg.max_seq_len)
    tok = np.zeros((batch_size, s), np.int32)
    tgt = np.zeros((batch_size, s), np.int32)
    seg = np.zeros((batch_size, s), np.int32)
    msk = np.zeros((batch_size, s), bool)
    for r, i in enumerate(idx):
      n = len(items[i].inputs)
      tok[r, :n], tgt[r, :n] = items[i].inputs, items[i].targets
      seg[r, :n], msk[r, :n] = 1, np.asarray(items[i].mask, bool)
    logp, greedy = jax.device_get(token_logprobs(params, tok, tgt, seg, cfg=cfg))
    for r, i in enumerate(idx):
      m = msk[r]
      out[i] = Score(float(np.sum(logp[r][m], dtype=np.float64)), bool(np.all(greedy[r][m])),
                     int(m.sum()))
  return out
