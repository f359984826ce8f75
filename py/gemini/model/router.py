"""MoE router: top-k expert choice, gates, and the two router losses (all in f32).

Gating choices (the reports give no detail; these are the well-known public techniques):
  softmax: probs = softmax(logits) over all E experts, top-k by prob. For k > 1 the k chosen
           gates are renormalised to sum to 1 (softmax over the chosen logits), so the layer's
           output scale does not depend on how peaked the router is; for k = 1 the gate is the
           chosen expert's full-softmax prob (Switch Transformer), which keeps a gradient path
           into the router. With E = 1 the gate is exactly 1, so the layer equals a dense MLP.
  sigmoid: scores = sigmoid(logits), top-k by score, gates are the raw chosen scores (no
           renormalisation: each expert's gate is an independent "how much" in (0, 1)).

Losses:
  aux_loss (Switch load balancing) = E * sum_e f_e * P_e, where f_e is the fraction of the
           T*k routed assignments that chose expert e (before any capacity drop) and P_e the mean
           over tokens of the router's distribution (softmax probs; for sigmoid gating the scores
           normalised to sum to 1 per token). Equals 1 for a perfectly uniform router.
  z_loss   (ST-MoE) = mean over tokens of logsumexp(logits)^2.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
  expert_ids: jax.Array   # int32 [T, k], the k chosen experts per token (best first)
  gates: jax.Array        # f32 [T, k], combine weights of the chosen experts
  probs: jax.Array        # f32 [T, E], router distribution used by the aux loss
  logits: jax.Array       # f32 [T, E]


def route(x: jax.Array, router_w: jax.Array, top_k: int, gate: str) -> Routing:
  """x [T,D] any float dtype, router_w [D,E] -> Routing (all f32 except expert_ids)."""
  logits = jnp.einsum("td,de->te", x.astype(jnp.float32), router_w.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  if gate == "softmax":
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, expert_ids = jax.lax.top_k(probs, top_k)
    if top_k > 1:
      gates = jax.nn.softmax(jnp.take_along_axis(logits, expert_ids, axis=-1), axis=-1)
    else:
      gates = top_p
  elif gate == "sigmoid":
    scores = jax.nn.sigmoid(logits)
    gates, expert_ids = jax.lax.top_k(scores, top_k)
    probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
  else:
    raise ValueError(f"moe.gate={gate!r}: expected 'softmax' or 'sigmoid'")
  return Routing(expert_ids.astype(jnp.int32), gates, probs, logits)


def expert_fractions(expert_ids: jax.Array, num_experts: int) -> jax.Array:
  """expert_ids int [T,k] -> f32 [E]: fraction of the T*k assignments routed to each expert."""
  counts = jnp.sum(jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.float32), axis=(0, 1))
  return counts / expert_ids.size


def load_balancing_loss(probs: jax.Array, expert_ids: jax.Array) -> jax.Array:
  """Switch aux loss E * sum_e f_e * mean_t probs[t,e]; probs [T,E] f32 -> scalar f32."""
  e = probs.shape[-1]
  f = jax.lax.stop_gradient(expert_fractions(expert_ids, e))
  return e * jnp.sum(f * jnp.mean(probs, axis=0))


def router_z_loss(logits: jax.Array) -> jax.Array:
  """mean_t logsumexp(logits[t])^2; logits [T,E] f32 -> scalar f32."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
