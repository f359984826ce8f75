"""Staged mixture weights: base proportions from token counts, domain data raised late.

The reports find mixture proportions by ablation and raise the weight of domain-relevant data
towards the end of training. `staged_mixture` builds that schedule for the loader:
  stage 1 (batches < (1 - late_fraction) * total): w_s ∝ tokens_s ** alpha  (alpha < 1 flattens
          the natural proportions so small sources are not drowned: temperature sampling)
  stage 2 (the rest): the same weights with `domains` multiplied by `boost`, renormalised.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from gemini.data.loader import Mixture, Stage


def base_weights(token_counts: Mapping[str, int], alpha: float = 0.7) -> Dict[str, float]:
  """Normalised w_s ∝ tokens_s ** alpha over sources with tokens."""
  if not 0 < alpha <= 1:
    raise ValueError(f"base_weights: alpha {alpha} not in (0, 1]")
  raw = {s: float(n) ** alpha for s, n in token_counts.items() if n > 0}
  if not raw:
    raise ValueError("base_weights: no source has tokens")
  total = sum(raw.values())
  return {s: w / total for s, w in raw.items()}


def staged_mixture(token_counts: Mapping[str, int], total_batches: int,
                   domains: Sequence[str] = (), late_fraction: float = 0.2, boost: float = 4.0,
                   alpha: float = 0.7) -> Mixture:
  """Two-stage Mixture (see module docstring); one stage if no domains are given."""
  base = base_weights(token_counts, alpha)
  unknown = set(domains) - set(base)
  if unknown:
    raise ValueError(f"staged_mixture: domains {sorted(unknown)} not among sources {sorted(base)}")
  if not domains:
    return Mixture([Stage(base)])
  if not 0 < late_fraction < 1 or boost <= 0:
    raise ValueError(f"staged_mixture: late_fraction {late_fraction} / boost {boost} invalid")
  late = {s: w * (boost if s in domains else 1.0) for s, w in base.items()}
  total = sum(late.values())
  late = {s: w / total for s, w in late.items()}
  switch = max(1, int(round(total_batches * (1 - late_fraction))))
  return Mixture([Stage(base, until_batch=switch), Stage(late)])
