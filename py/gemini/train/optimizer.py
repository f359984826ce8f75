"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

Weight decay applies to matrices only. Not decayed (the usual practice for LLMs, because
shrinking them towards zero changes the function rather than regularising it):
  - every parameter with fewer than 2 dimensions: RMSNorm scales, biases;
  - embedding tables: `embed/tokens` and the vision `pos_embed` (rows of rare tokens would
    otherwise decay to zero between their rare updates). A tied output projection is the
    embedding, so it is not decayed either; an untied `unembed` is an ordinary matrix and is.
The optimizer state is f32 like the master weights.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from gemini.train.train_config import TrainConfig

_NO_DECAY_NAMES = ("tokens", "pos_embed")


def _path_names(path) -> tuple:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return tuple(names)


def decay_mask(params: Any) -> Any:
  """Pytree of bools shaped like `params`: True where weight decay applies."""
  def decays(path, leaf):
    names = _path_names(path)
    return leaf.ndim >= 2 and not (names and names[-1] in _NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decays, params)


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
  """Linear warmup 0 -> tc.lr over warmup_steps, cosine to tc.lr*min_lr_ratio at tc.steps."""
  warmup = min(tc.warmup_steps, max(tc.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.lr, warmup_steps=warmup,
      decay_steps=max(tc.steps, warmup + 1), end_value=tc.lr * tc.min_lr_ratio)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """The training optimizer for `tc` (clip -> AdamW with masked decay)."""
  parts = []
  if tc.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.clip_norm))
  parts.append(optax.adamw(lr_schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps,
                           weight_decay=tc.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
