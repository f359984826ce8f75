"""GRPO (DeepSeekMath, arXiv 2402.03300): group-normalised advantages and the clipped
objective with a KL penalty to the reference policy.

For each prompt, G completions o_1..o_G are sampled from the old policy and scored r_i. The
advantage of every token of o_i is A_i = (r_i - mean(r)) / (std(r) + eps) (population std
over the group; outcome supervision). The objective, maximised, is

  J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-e, 1+e) A_i) - beta KL_it ]

with rho_it = pi(o_it)/pi_old(o_it) and the unbiased, non-negative KL estimator
KL_it = pi_ref/pi - log(pi_ref/pi) - 1 (their eq. 4). `grpo_loss` returns -J.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, eps: float = 1e-4) -> jax.Array:
  """rewards f32 [P, G] (P prompts x G completions) -> advantages f32 [P, G]. A group whose
  rewards are all equal gets advantage 0 (nothing to learn from it)."""
  r = rewards.astype(jnp.float32)
  mean = jnp.mean(r, axis=-1, keepdims=True)
  std = jnp.std(r, axis=-1, keepdims=True)
  return (r - mean) / (std + eps)


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array,
              mask: jax.Array, clip_eps: float = 0.2,
              kl_beta: float = 0.04) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """logp/old_logp/ref_logp f32 [N,T] (log-prob of each sampled token under the policy being
  trained, the sampling policy and the reference), advantages f32 [N] (one per completion),
  mask [N,T] (1 on completion tokens). -> (-J f32 [], {kl, clip_fraction, objective})."""
  m = mask.astype(jnp.float32)
  ratio = jnp.exp(logp - old_logp)
  a = advantages[:, None]
  surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * a)
  kl = kl_k3(logp, ref_logp)
  per_token = surrogate - kl_beta * kl
  length = jnp.maximum(jnp.sum(m, axis=-1), 1.0)
  per_seq = jnp.sum(per_token * m, axis=-1) / length
  objective = jnp.mean(per_seq)
  clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)
  return -objective, {
      "objective": objective,
      "kl": jnp.mean(jnp.sum(kl * m, axis=-1) / length),
      "clip_fraction": jnp.sum(clipped * m) / jnp.maximum(jnp.sum(m), 1.0)}
