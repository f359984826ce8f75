"""Training hyperparameters (the model's shapes live in `gemini.config.ModelConfig`).

`TrainConfig` is a frozen dataclass; `train_flags.py` makes each field an absl flag.
Non-finite or out-of-range hyper-parameters are refused when it is built. Staged data
mixtures are parsed here from their flag syntax:

    "0:web=0.8,code=0.2;300:web=0.5,code=0.5"   -> stage starting at step 0, then at 300
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

Stage = Tuple[int, Tuple[Tuple[str, float], ...]]


def _f(default, help_text: str):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every field is a command-line flag of the trainer (gemini.train.train_flags)."""
  steps: int = _f(200, "Optimizer updates.")
  batch_size: int = _f(8, "Global sequences per optimizer update.")
  seq_len: int = _f(128, "Tokens per sequence.")
  grad_accum: int = _f(1, "Microbatches per update; batch_size % grad_accum == 0.")
  lr: float = _f(3e-3, "Peak learning rate.")
  warmup_steps: int = _f(20, "Linear warmup steps.")
  min_lr_ratio: float = _f(0.1, "The cosine decays to lr * min_lr_ratio at `steps`.")
  weight_decay: float = _f(0.1, "AdamW decay on matrices (not norms/embeddings).")
  b1: float = _f(0.9, "AdamW first-moment decay.")
  b2: float = _f(0.95, "AdamW second-moment decay.")
  eps: float = _f(1e-8, "AdamW epsilon.")
  clip_norm: float = _f(1.0, "Global gradient-norm clip; 0 disables.")
  seed: int = _f(0, "Init and data seed.")
  checkpoint_every: int = _f(50, "Checkpoint cadence in steps; 0 disables checkpoints.")
  keep_checkpoints: int = _f(3, "Newest checkpoints kept (the newest verified one is always "
                             "kept as well).")
  log_every: int = _f(10, "Progress line cadence; 0: only the first and last step.")
  replica_every: int = _f(0, "In-memory redundant copy cadence; 0 disables.")
  sdc_every: int = _f(0, "Deterministic-replay SDC check cadence; 0 disables.")
  on_divergence: str = _f("stop", "A non-finite loss or gradient norm: 'stop' (exit non-zero, "
                          "nothing non-finite saved) or 'rollback' (restore the last good "
                          "checkpoint and skip the batches since).")
  max_rollbacks: int = _f(3, "Rollbacks allowed per run before stopping anyway.")
  spike_window: int = _f(50, "Steps of loss history the spike detector's z-score uses; 0: off.")
  spike_zscore: float = _f(6.0, "A loss more than this many standard deviations above the "
                           "window's mean is reported as a spike.")
  mixture_stages: Tuple[Stage, ...] = _f((), "Staged data mixture, e.g. "
                                         "'0:bible=0.8,code=0.2;300:bible=0.5,code=0.5'.")

  def __post_init__(self):
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "keep_checkpoints"):
      _require(self, name, getattr(self, name) > 0, "must be > 0")
    for name in ("warmup_steps", "checkpoint_every", "log_every", "replica_every", "sdc_every",
                 "max_rollbacks", "spike_window"):
      _require(self, name, getattr(self, name) >= 0, "must be >= 0")
    for name in ("lr", "eps", "spike_zscore"):
      v = getattr(self, name)
      _require(self, name, math.isfinite(v) and v > 0, "must be finite and > 0")
    for name in ("weight_decay", "clip_norm"):
      v = getattr(self, name)
      _require(self, name, math.isfinite(v) and v >= 0, "must be finite and >= 0")
    for name in ("b1", "b2"):
      v = getattr(self, name)
      _require(self, name, math.isfinite(v) and 0 <= v < 1, "must be in [0, 1)")
    _require(self, "min_lr_ratio", math.isfinite(self.min_lr_ratio) and
             0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
    _require(self, "on_divergence", self.on_divergence in ("stop", "rollback"),
             "must be 'stop' or 'rollback'")
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


def _require(tc: "TrainConfig", name: str, ok: bool, what: str) -> None:
  if not ok:
    raise ValueError(f"invalid TrainConfig: --{name}={getattr(tc, name)!r} {what}")


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
