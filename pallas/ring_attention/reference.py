"""Dense pure-JAX attention: the reference every kernel in this folder is tested against.

Mask (the repo's shared convention; bid = bidirectional item id, 0 = none):
  allowed(q, k) = seg[q] == seg[k] and seg[q] != 0
                  and (not causal or pos[k] <= pos[q] or (bid[q] != 0 and bid[q] == bid[k])).
Rows with no allowed key (padding queries) output zeros and have log-sum-exp NEG_INF.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: keeps exp(x - lse) and log-sum-exp merges free of NaN.
NEG_INF = -1e30


def attention_mask(q_seg: jax.Array, k_seg: jax.Array, q_pos: jax.Array, k_pos: jax.Array,
                   causal: bool, q_bid: Optional[jax.Array] = None,
                   k_bid: Optional[jax.Array] = None) -> jax.Array:
  """bool [B, Sq, Sk] from int32 segment ids, positions and item ids q_* [B, Sq], k_* [B, Sk]."""
  mask = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  if causal:
    visible = k_pos[:, None, :] <= q_pos[:, :, None]
    if q_bid is not None:
      visible |= (q_bid[:, :, None] != 0) & (q_bid[:, :, None] == k_bid[:, None, :])
    mask &= visible
  return mask


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_ids, k_ids, *, causal: bool,
                    sm_scale: float):
  """Dense f32 attention of queries against one set of keys, each side with its own ids.

  q [B,Sq,H,Dh], k/v [B,Sk,K,Dh] (H % K == 0; query head h reads kv head h // (H/K)), q_ids and
  k_ids (seg, pos, bid) int32 [B,Sq] / [B,Sk]. Returns (out f32 [B,Sq,H,Dh], lse f32 [B,H,Sq]);
  rows with no allowed key give zeros and NEG_INF. The ring's XLA blocks call this per step.
  """
  h, kh = q.shape[2], k.shape[2]
  if h % kh:
    raise ValueError(f"reference.attention: n_heads={h} is not a multiple of kv heads={kh}")
  (q_seg, q_pos, q_bid), (k_seg, k_pos, k_bid) = q_ids, k_ids
  mask = attention_mask(q_seg, k_seg, q_pos, k_pos, causal, q_bid, k_bid)[:, None]  # [B,1,Sq,Sk]
  rep = h // kh
  kf = jnp.repeat(k.astype(jnp.float32), rep, axis=2)
  vf = jnp.repeat(v.astype(jnp.float32), rep, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), kf,
                      precision=jax.lax.Precision.HIGHEST) * sm_scale
  logits = jnp.where(mask, logits, NEG_INF)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.where(mask, jnp.exp(logits - m), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  safe = jnp.where(l == 0, 1.0, l)
  out = jnp.einsum("bhqk,bkhd->bqhd", p / safe, vf, precision=jax.lax.Precision.HIGHEST)
  return out, jnp.where(l == 0, NEG_INF, m + jnp.log(safe))[..., 0]


def attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array,
                       segment_ids: Optional[jax.Array] = None, *, causal: bool = True,
                       sm_scale: Optional[float] = None, positions: Optional[jax.Array] = None,
                       bidir_ids: Optional[jax.Array] = None):
  """Dense attention in f32.

  q [B,S,H,Dh], k/v [B,S,K,Dh] (H % K == 0; query head h reads kv head h // (H/K)),
  segment_ids int32 [B,S] (0 = padding; None = one segment), positions int32 [B,S] used by the
  causal test (None = 0..S-1), bidir_ids int32 [B,S] (None = no items).
  Returns (out [B,S,H,Dh] in q.dtype, lse f32 [B,H,S]).
  """
  b, s, _, d = q.shape
  seg = jnp.ones((b, s), jnp.int32) if segment_ids is None else segment_ids
  pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)) if positions is None else positions
  bid = jnp.zeros((b, s), jnp.int32) if bidir_ids is None else bidir_ids
  out, lse = block_attention(q, k, v, (seg, pos, bid), (seg, pos, bid), causal=causal,
                             sm_scale=d ** -0.5 if sm_scale is None else sm_scale)
  return out.astype(q.dtype), lse


def attention(q, k, v, segment_ids=None, bidir_ids=None, *, causal=True, sm_scale=None):
  """Dense attention, same contract as `ops.flash_attention`: [B,S,H,Dh] -> [B,S,H,Dh]."""
  return attention_with_lse(q, k, v, segment_ids, causal=causal, sm_scale=sm_scale,
                            bidir_ids=bidir_ids)[0]
