"""Training hyperparameters (the model's shapes live in `gemini.config.ModelConfig`).

`TrainConfig` is a frozen dataclass; `main.py` fills it from absl flags. Staged data
mixtures are parsed here from their flag syntax:

    "0:web=0.8,code=0.2;300:web=0.5,code=0.5"   -> stage starting at step 0, then at 300
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

Stage = Tuple[int, Tuple[Tuple[str, float], ...]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 200
  batch_size: int = 8             # Global sequences per optimizer update.
  seq_len: int = 128
  grad_accum: int = 1             # Microbatches per update; batch_size % grad_accum == 0.
  lr: float = 3e-3                # Peak learning rate.
  warmup_steps: int = 20
  min_lr_ratio: float = 0.1       # Cosine decays to lr * min_lr_ratio at `steps`.
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0          # Global gradient-norm clip; 0 disables.
  seed: int = 0
  checkpoint_every: int = 50      # 0 disables checkpoints.
  keep_checkpoints: int = 3
  log_every: int = 10
  replica_every: int = 0          # In-memory redundant copy cadence; 0 disables.
  sdc_every: int = 0              # Deterministic-replay SDC check cadence; 0 disables.
  mixture_stages: Tuple[Stage, ...] = ()

  def __post_init__(self):
    for name in ("steps", "batch_size", "seq_len", "grad_accum"):
      if getattr(self, name) <= 0:
        raise ValueError(f"invalid TrainConfig: {name}={getattr(self, name)} must be > 0")
    if self.batch_size % self.grad_accum:
      raise ValueError(f"invalid TrainConfig: batch_size={self.batch_size} is not a multiple of "
                       f"grad_accum={self.grad_accum}")
    steps = [s for s, _ in self.mixture_stages]
    if steps and (steps[0] != 0 or steps != sorted(set(steps))):
      raise ValueError(f"invalid TrainConfig: mixture stage steps {steps} must start at 0 and "
                       "increase")

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.seq_len

  def mixture_at(self, step: int) -> Dict[str, float] | None:
    """Mixture weights in force at `step` (None when no stages are configured)."""
    current = None
    for start, weights in self.mixture_stages:
      if step >= start:
        current = dict(weights)
    return current


def parse_mixture_stages(text: str) -> Tuple[Stage, ...]:
  """Parses "0:web=0.8,code=0.2;300:web=0.5,code=0.5" into stages (weights normalised)."""
  stages = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    start, sep, body = part.partition(":")
    if not sep:
      raise ValueError(f"--mixture_stages: stage {part!r} lacks 'STEP:'")
    try:
      step = int(start)
      pairs = [kv.split("=", 1) for kv in body.split(",") if kv.strip()]
      weights = [(k.strip(), float(v)) for k, v in pairs]
    except ValueError:
      raise ValueError(f"--mixture_stages: cannot parse stage {part!r} "
                       "(expected STEP:name=weight,...)") from None
    total = sum(w for _, w in weights)
    if not weights or total <= 0 or any(w < 0 for _, w in weights):
      raise ValueError(f"--mixture_stages: stage {part!r} needs non-negative weights with a "
                       "positive sum")
    stages.append((step, tuple((k, w / total) for k, w in weights)))
  return tuple(stages)
