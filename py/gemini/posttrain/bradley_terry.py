"""Bradley–Terry preference loss for a scalar reward model.

P(chosen > rejected) = sigmoid(r_c - r_r); the loss is its negative log-likelihood,
mean softplus(-(r_c - r_r)), and the pair accuracy is the fraction with r_c > r_r.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array,
                       weights=None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """r_chosen, r_rejected f32 [N] (optional weights [N]) -> (mean NLL f32 [], {accuracy})."""
  margin = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32)
  w = jnp.ones_like(margin) if weights is None else weights.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w), 1.0)
  loss = jnp.sum(jax.nn.softplus(-margin) * w) / n
  acc = jnp.sum((margin > 0).astype(jnp.float32) * w) / n
  return loss, {"accuracy": acc, "margin": jnp.sum(margin * w) / n}
