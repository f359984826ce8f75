"""The three request types of lm-evaluation-harness, as plain frozen dataclasses.

    Loglikelihood(context, continuation)   -> (sum log p(continuation | context), is_greedy)
    LoglikelihoodRolling(text)             -> sum log p(text) over the whole text (perplexity)
    GenerateUntil(context, until, ...)     -> generated string, cut before the first stop string

Log-probabilities are natural logs (nats). A model answers a list of requests of one type in
one call (batched inside), in the order given.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Loglikelihood:
  context: str
  continuation: str


@dataclasses.dataclass(frozen=True)
class LoglikelihoodRolling:
  text: str


@dataclasses.dataclass(frozen=True)
class GenerateUntil:
  context: str
  until: Tuple[str, ...] = ()
  max_gen_toks: int = 128
  temperature: float = 0.0       # 0 = greedy
  top_p: float = 1.0
  seed: int = 0                  # sampling key; requests with equal seeds sample alike
