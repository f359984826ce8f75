"""Held-out loss: the token-weighted mean next-token cross-entropy over fixed batches.

A training step's loss moves with whatever documents that batch happened to hold; the same
held-out batches evaluated before and after training measure learning without that noise.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import jax
import numpy as np

Batch = Dict[str, np.ndarray]


def take_batches(loader, n: int) -> List[Batch]:
  """The first `n` batches of `loader` (host arrays), copied so the loader may be closed."""
  return [{k: np.array(v) for k, v in next(loader).items()} for _ in range(n)]


def evaluate(loss_fn: Callable, params, batches: Sequence[Batch],
             to_device: Callable[[Batch], Dict[str, jax.Array]] = lambda b: b) -> Dict[str, float]:
  """-> {"loss": nats/token, "accuracy": top-1, "tokens": count} over all `batches`.

  loss_fn(params, batch, rng) -> (loss, metrics) with metrics "ce_loss" (mean over the
  batch's counted tokens), "accuracy" and "num_tokens", as gemini.model.transformer.loss_fn.
  Batches are weighted by their token counts, so the result is the per-token mean over all.
  """
  if not batches:
    raise ValueError("evaluate: no batches")
  step = jax.jit(lambda p, b: loss_fn(p, b, jax.random.key(0))[1])
  ce = acc = tokens = 0.0
  for batch in batches:
    m = jax.device_get(step(params, to_device(batch)))
    n = float(m["num_tokens"])
    ce += float(m["ce_loss"]) * n
    acc += float(m["accuracy"]) * n
    tokens += n
  if tokens == 0:
    raise ValueError("evaluate: the batches hold no counted tokens (all padding)")
  return {"loss": ce / tokens, "accuracy": acc / tokens, "tokens": int(tokens)}
