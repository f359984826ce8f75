"""Distillation losses: hard labels, sparse (top-k or sampled-k) teacher targets, full logits.

Shapes: student logits f32 [B,S,V]; a sparse teacher target is (ids int32 [B,S,K],
values f32 [B,S,K]) where `values` are log-weights over the kept ids (-inf = empty slot):
  - top-k: the teacher's log-probabilities of its k most likely tokens. The target is those
    probabilities renormalised over the kept ids (biased: the tail mass is dropped and
    redistributed over the head).
  - sampled-k (Random-Sampling KD, arXiv 2503.16870): log of the importance-weighted empirical
    distribution of n ids drawn from the teacher (see `sampled_targets`); its expectation is the
    teacher distribution itself, so the loss and its gradient are unbiased.
`weights` f32 [B,S] selects the positions that count (0 = padding / masked).

Temperature T follows Hinton et al.: both distributions are softened by T and the KD term is
multiplied by T^2 so its gradient scale does not shrink with T. For top-k targets the stored
log-probabilities are divided by T before renormalising; sampled-k targets estimate the
teacher at the temperature they were sampled at, so they are used as stored.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp


def _weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def hard_ce(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy: logits [B,S,V], targets int [B,S], weights [B,S] -> []."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return _weighted_mean(nll, weights)


def sparse_target_probs(values: jax.Array, temperature: float = 1.0,
                        tempered: bool = True) -> jax.Array:
  """values [..., K] log-weights (-inf = empty) -> probabilities over the K slots summing
  to 1 (values / T first when `tempered`)."""
  v = values.astype(jnp.float32)
  if tempered:
    v = v / temperature
  return jax.nn.softmax(v, axis=-1)


def sparse_kd(logits: jax.Array, ids: jax.Array, values: jax.Array, weights: jax.Array,
              temperature: float = 1.0, tempered: bool = True) -> jax.Array:
  """T^2 * mean over positions of -sum_j q_j log s_T(ids_j), q = sparse_target_probs.

  logits [B,S,V], ids int [B,S,K], values [B,S,K], weights [B,S] -> f32 []."""
  q = sparse_target_probs(values, temperature, tempered)
  logs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  picked = jnp.take_along_axis(logs, ids.astype(jnp.int32), axis=-1)
  ce = -jnp.sum(jnp.where(q > 0, q * picked, 0.0), axis=-1)
  return temperature ** 2 * _weighted_mean(ce, weights)


def full_kd(logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array,
            temperature: float = 1.0) -> Tuple[jax.Array, jax.Array]:
  """Full-vocabulary distillation. -> (T^2 * mean CE(p_T, s_T), mean KL(p_T || s_T)).

  The CE and the KL differ by the teacher's entropy, so they have the same gradient."""
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  logs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  p = jnp.exp(logp)
  ce = -jnp.sum(p * logs, axis=-1)
  kl = jnp.sum(p * (logp - logs), axis=-1)
  return temperature ** 2 * _weighted_mean(ce, weights), _weighted_mean(kl, weights)


def topk_targets(teacher_logits: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  """The teacher's k most likely ids and their log-probabilities (T = 1), sorted by
  decreasing probability: [..., V] -> (ids int32 [..., k], logprobs f32 [..., k])."""
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  vals, ids = jax.lax.top_k(logp, k)
  return ids.astype(jnp.int32), vals


def sampled_targets(key: jax.Array, teacher_logits: jax.Array, n: int,
                    proposal_temperature: float = 1.0) -> Tuple[jax.Array, jax.Array]:
  """Random-Sampling KD targets: n ids drawn i.i.d. from the proposal q ∝ p^(1/tau) and
  importance weights w = p/q, giving p_hat(x) = sum_{draws = x} w / sum_draws w.

  With tau = 1 all weights are 1 and p_hat = counts / n, an unbiased estimate of p (E[p_hat] =
  p); tau > 1 spreads the draws into the tail (self-normalised, consistent). Duplicates are
  merged: each of the n output slots holds a distinct id with log p_hat, unused slots have
  value -inf (and id 0). teacher_logits [..., V] -> (ids int32 [..., n], values f32 [..., n])."""
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(logp / proposal_temperature, axis=-1)
  draws = _inverse_cdf_draws(key, logq, n)                               # [..., n]
  logw = (jnp.take_along_axis(logp, draws, -1) - jnp.take_along_axis(logq, draws, -1))
  srt = jnp.sort(draws, axis=-1)
  order = jnp.argsort(draws, axis=-1)
  logw = jnp.take_along_axis(logw, order, -1)
  first = jnp.concatenate([jnp.ones_like(srt[..., :1], bool), srt[..., 1:] != srt[..., :-1]], -1)
  # Each draw's weight counts for its id; the merged weight sits on the id's first slot.
  same = srt[..., :, None] == srt[..., None, :]                         # [..., n, n]
  w = jnp.exp(logw - jnp.max(logw, axis=-1, keepdims=True))
  merged = jnp.sum(jnp.where(same, w[..., None, :], 0.0), axis=-1)
  total = jnp.sum(w, axis=-1, keepdims=True)
  values = jnp.where(first, jnp.log(merged / total), -jnp.inf)
  ids = jnp.where(first, srt, 0)
  return ids, values


def _inverse_cdf_draws(key: jax.Array, logq: jax.Array, n: int) -> jax.Array:
  """n i.i.d. ids from softmax(logq) per row by inverse-CDF search: memory O(V) per row
  (Gumbel-max would materialise n x V noise). logq [..., V] -> int32 [..., n]."""
  v = logq.shape[-1]
  cdf = jnp.cumsum(jnp.exp(logq).reshape(-1, v), axis=-1)
  u = jax.random.uniform(key, (cdf.shape[0], n)) * cdf[:, -1:]
  idx = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf, u)
  return jnp.minimum(idx, v - 1).astype(jnp.int32).reshape(logq.shape[:-1] + (n,))


def distill_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                 hard_weight: float, temperature: float = 1.0, ids=None, values=None,
                 teacher_logits=None, tempered: bool = True) -> Tuple[jax.Array, Dict]:
  """hard_weight * hard CE + (1 - hard_weight) * KD, KD from the sparse (ids, values) target
  or the full teacher logits (whichever is given; neither = hard labels only).
  -> (loss f32 [], {hard_ce, kd})."""
  hard = hard_ce(logits, targets, weights)
  if teacher_logits is not None:
    kd, _ = full_kd(logits, teacher_logits, weights, temperature)
  elif ids is not None:
    kd = sparse_kd(logits, ids, values, weights, temperature, tempered)
  else:
    return hard, {"hard_ce": hard, "kd": jnp.zeros((), jnp.float32)}
  loss = hard_weight * hard + (1.0 - hard_weight) * kd
  return loss, {"hard_ce": hard, "kd": kd}
