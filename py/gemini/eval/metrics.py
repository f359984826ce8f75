"""Metrics: multiple choice by log-likelihood, perplexity, pass@k.

acc       argmax_i log p(choice_i | context) is the gold choice
acc_norm  the same with log p divided by the choice's length in bytes (UTF-8), lm-eval's
          length normalisation (byte length keeps it tokenizer-independent)
perplexity over a corpus: nats/token = -Σ log p / Σ tokens;
          bits/byte = -Σ log p / (ln 2 · Σ UTF-8 bytes), comparable across tokenizers
pass@k    unbiased estimator (Chen et al. 2021) for n samples of which c pass:
          1 - C(n-c, k) / C(n, k), computed as 1 - Π_{i=n-c+1..n} (1 - k/i)
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np


def multiple_choice(logprobs: Sequence[float], choices: Sequence[str], gold: int
                    ) -> Dict[str, float]:
  """One question: {'acc': 0/1, 'acc_norm': 0/1}."""
  if len(logprobs) != len(choices) or not 0 <= gold < len(choices):
    raise ValueError(f"multiple_choice: {len(logprobs)} scores, {len(choices)} choices, "
                     f"gold={gold}")
  lp = np.asarray(logprobs, np.float64)
  lengths = np.asarray([max(1, len(c.encode("utf-8"))) for c in choices], np.float64)
  return {"acc": float(int(np.argmax(lp)) == gold),
          "acc_norm": float(int(np.argmax(lp / lengths)) == gold)}


def perplexity(logprobs: Sequence[float], num_tokens: Sequence[int], texts: Sequence[str]
               ) -> Dict[str, float]:
  """Corpus-level figures from per-document log p, token counts and texts."""
  nll = -float(np.sum(logprobs, dtype=np.float64))
  tokens = int(np.sum(num_tokens))
  nbytes = sum(len(t.encode("utf-8")) for t in texts)
  if tokens <= 0 or nbytes <= 0:
    raise ValueError("perplexity: empty corpus")
  return {"nats_per_token": nll / tokens, "bits_per_byte": nll / (math.log(2) * nbytes),
          "perplexity": math.exp(nll / tokens), "tokens": tokens, "bytes": nbytes}


def pass_at_k(n: int, c: int, k: int) -> float:
  """Probability that at least one of k samples drawn without replacement from n (c correct)
  passes."""
  if not 0 <= c <= n or k < 1:
    raise ValueError(f"pass_at_k: need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
  if k > n:
    raise ValueError(f"pass_at_k: k={k} > n={n} samples")
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))
