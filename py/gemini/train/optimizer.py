"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

The mask comes with the model (`ModelFns.decay_mask`; for the Gemini decoder
`gemini.model.spec.decay_mask`: matrices decay, norms, biases and embedding tables do not).
The optimizer state is f32 like the master weights.
"""

from __future__ import annotations

from typing import Any

import optax

from gemini.train.train_config import TrainConfig

def lr_schedule(tc: TrainConfig) -> optax.Schedule:
  """Linear warmup 0 -> tc.lr over warmup_steps, cosine to tc.lr*min_lr_ratio at tc.steps."""
  warmup = min(tc.warmup_steps, max(tc.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.lr, warmup_steps=warmup,
      decay_steps=max(tc.steps, warmup + 1), end_value=tc.lr * tc.min_lr_ratio)


def make_optimizer(tc: TrainConfig, decay_mask: Any) -> optax.GradientTransformation:
  """The training optimizer for `tc` (clip -> AdamW with weight decay where `decay_mask`,
  a tree of bools shaped like the params or a callable params -> such a tree, is True)."""
  parts = []
  if tc.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.clip_norm))
  parts.append(optax.adamw(lr_schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps,
                           weight_decay=tc.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
