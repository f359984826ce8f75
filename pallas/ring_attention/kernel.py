"""Blockwise (flash) attention Pallas kernels: forward with log-sum-exp, backward dq and dk/dv.

Layout inside this module is BHSD: q [B,H,S,Dh], k/v [B,K,S,Dh], H % K == 0. Query head h reads
kv head h // (H/K) through the BlockSpec index maps, so kv heads are never copied.

Masking is by data, not by geometry: every query and key carries an int32 segment id
(0 = padding), an int32 position and an int32 bidirectional item id (0 = none; a media item's
tokens share one nonzero id):
  allowed(q,k) = seg[q] == seg[k] and seg[q] != 0
                 and (not causal or pos[k] <= pos[q] or (bid[q] != 0 and bid[q] == bid[k])).
This one rule serves the single-device kernel (positions 0..S-1), packed sequences, multimodal
batches, and every step of the ring whatever the sequence layout (zigzag chunks carry their
global positions and item ids). The three ids arrive as [B,S,1] for queries (sublane vector)
and [B,1,S] for keys (lane vector), so the [bq,bk] mask is a broadcast compare.

Block skipping: per-block summaries (min/max position, segment id and nonzero item id) are
scalar-prefetched into SMEM; a (q block, k block) pair whose ranges cannot produce an allowed
entry is skipped (no matmul, no exp). A block above the causal diagonal is computed only if
the item-id ranges of the two blocks overlap (an item may span it). On TPU, block_k must be a
multiple of 128 (lane tiling of the key id rows) or the whole padded sequence; block_q a
multiple of 8.

All accumulation is f32 (online softmax: running max m, normaliser l, output acc).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas.ring_attention.reference import NEG_INF

_F32 = jnp.float32
# Per-block summary columns in the prefetched tables. _BID_MIN is the smallest nonzero item
# id (_NO_ITEM when the block has none), _BID_MAX the largest (0 when none), so two blocks
# may share an item only if [min, max] ranges intersect.
_POS_MIN, _POS_MAX, _SEG_MIN, _SEG_MAX, _BID_MIN, _BID_MAX = range(6)
_COLS = 6
_NO_ITEM = jnp.iinfo(jnp.int32).max


class Tokens(NamedTuple):
  """Per-token mask data, int32 [B,S]: seg (0 = padding), pos, bid (item id, 0 = none)."""
  seg: jax.Array
  pos: jax.Array
  bid: jax.Array


def block_summary(tok: Tokens, block: int) -> jax.Array:
  """int32 [B * (S//block) * 6] flat table, per block:
  (pos_min, pos_max, seg_min, seg_max, nonzero bid_min or _NO_ITEM, bid_max)."""
  b, s = tok.seg.shape
  seg, pos, bid = (x.reshape(b, s // block, block) for x in tok)
  table = jnp.stack([pos.min(-1), pos.max(-1), seg.min(-1), seg.max(-1),
                     jnp.where(bid != 0, bid, _NO_ITEM).min(-1), bid.max(-1)], axis=-1)
  return table.reshape(-1).astype(jnp.int32)


def block_needed(qs, ks, q_row, k_row, causal):
  """Scalar bool: may the q block and k block at these table rows hold an allowed entry?

  qs/ks: flat SMEM tables from `block_summary`; row = batch * blocks_per_seq + block.
  """
  qb, kb = q_row * _COLS, k_row * _COLS
  ok = ((qs[qb + _SEG_MAX] >= ks[kb + _SEG_MIN]) & (ks[kb + _SEG_MAX] >= qs[qb + _SEG_MIN])
        & (qs[qb + _SEG_MAX] > 0) & (ks[kb + _SEG_MAX] > 0))
  if causal:
    past = qs[qb + _POS_MAX] >= ks[kb + _POS_MIN]
    shared_item = ((qs[qb + _BID_MAX] >= ks[kb + _BID_MIN])
                   & (ks[kb + _BID_MAX] >= qs[qb + _BID_MIN]))
    ok = ok & (past | shared_item)
  return ok


def _mask(q_ids, k_ids, causal):
  """bool [bq,bk] from q_ids = (seg, pos, bid) [bq,1] each and k_ids likewise [1,bk]."""
  (qseg, qpos, qbid), (kseg, kpos, kbid) = q_ids, k_ids
  m = (qseg == kseg) & (qseg != 0)
  if causal:
    m = m & ((kpos <= qpos) | ((qbid != 0) & (qbid == kbid)))
  return m


def _dot_t(a, b):
  """a [m,d] @ b[n,d]^T in f32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=_F32)


def _t_dot(a, b):
  """a [m,n]^T @ b [m,d] in f32."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=_F32)


def online_softmax_step(q, k, v, q_ids, k_ids, m_ref, l_ref, acc_ref, *, causal, sm_scale):
  """One flash step on VMEM values/refs: folds keys k/v [bk,Dh] into the f32 state of q [bq,Dh].

  q_ids: (seg, pos, bid) of the queries, each [bq,1]; k_ids: those of the keys, each [1,bk]."""
  s = _dot_t(q, k) * sm_scale
  mask = _mask(q_ids, k_ids, causal)
  s = jnp.where(mask, s, NEG_INF)
  m_prev = m_ref[...]
  m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
  p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
  alpha = jnp.exp(m_prev - m_new)
  l_ref[...] = alpha * l_ref[...] + p.sum(axis=-1, keepdims=True)
  acc_ref[...] = alpha * acc_ref[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=_F32)
  m_ref[...] = m_new


def finalize(m, l, acc):
  """(out f32 [bq,Dh], lse f32 [bq,1]) from the online-softmax state; empty rows -> 0, NEG_INF."""
  safe = jnp.where(l == 0.0, 1.0, l)
  return acc / safe, jnp.where(l == 0.0, NEG_INF, m + jnp.log(safe))


def _read(refs):
  return tuple(r[...] for r in refs)


def _fwd_kernel(qs, ks, q_ref, k_ref, v_ref, qseg_ref, qpos_ref, qbid_ref, kseg_ref, kpos_ref,
                kbid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, causal, sm_scale, nq, nk):
  b, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(ki == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG_INF, _F32)
    l_sc[...] = jnp.zeros(l_sc.shape, _F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)

  @pl.when(block_needed(qs, ks, b * nq + qi, b * nk + ki, causal))
  def _step():
    online_softmax_step(q_ref[...], k_ref[...], v_ref[...], _read((qseg_ref, qpos_ref, qbid_ref)),
                        _read((kseg_ref, kpos_ref, kbid_ref)), m_sc, l_sc, acc_sc,
                        causal=causal, sm_scale=sm_scale)

  @pl.when(ki == nk - 1)
  def _done():
    out, lse = finalize(m_sc[...], l_sc[...], acc_sc[...])
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def _token_specs(bq, bk, qmap, kmap):
  """BlockSpecs for q-side [B,S,1] and k-side [B,1,S] id arrays (seg, pos, bid)."""
  qspec = pl.BlockSpec((None, bq, 1), qmap)
  kspec = pl.BlockSpec((None, 1, bk), kmap)
  return qspec, kspec


def _q_tok(tok):
  """(seg, pos, bid) as [B,S,1] query columns."""
  return tuple(x[:, :, None] for x in tok)


def _k_tok(tok):
  """(seg, pos, bid) as [B,1,S] key rows."""
  return tuple(x[:, None, :] for x in tok)


def _cost(q, k, v, matmuls: int, outs) -> pl.CostEstimate:
  """What XLA's cost_analysis should count for a kernel doing `matmuls` [Sq,Dh]x[Dh,Sk]-sized
  products per (batch, head): every block, as XLA counts its own attention (causally masked
  blocks included); without it the attention FLOPs of a ring step are invisible."""
  b, h, sq, d = q.shape
  sk = k.shape[2]
  io = sum(x.size * x.dtype.itemsize for x in (q, k, v)) + sum(
      math.prod(o.shape) * jnp.dtype(o.dtype).itemsize for o in outs)
  return pl.CostEstimate(flops=2 * matmuls * b * h * sq * sk * d, transcendentals=b * h * sq * sk,
                         bytes_accessed=io)


def flash_fwd(q, k, v, q_tok: Tokens, k_tok: Tokens, *, causal: bool, sm_scale: float,
              block_q: int, block_k: int, interpret, out_dtype=None):
  """Forward kernel. q [B,H,Sq,Dh], k/v [B,K,Sk,Dh]; Sq % block_q == Sk % block_k == 0.

  Returns (out [B,H,Sq,Dh] in out_dtype (default q.dtype), lse f32 [B,H,Sq,1]).
  """
  b, h, sq, d = q.shape
  kh, sk = k.shape[1], k.shape[2]
  g = h // kh
  nq, nk = sq // block_q, sk // block_k
  qspec = pl.BlockSpec((None, None, block_q, d), lambda b_, h_, i, j, *_: (b_, h_, i, 0))
  kspec = pl.BlockSpec((None, None, block_k, d), lambda b_, h_, i, j, *_: (b_, h_ // g, j, 0))
  qt, kt = _token_specs(block_q, block_k, lambda b_, h_, i, j, *_: (b_, i, 0),
                        lambda b_, h_, i, j, *_: (b_, 0, j))
  lspec = pl.BlockSpec((None, None, block_q, 1), lambda b_, h_, i, j, *_: (b_, h_, i, 0))
  kernel = functools.partial(_fwd_kernel, causal=causal, sm_scale=sm_scale, nq=nq, nk=nk)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, nq, nk),
      in_specs=[qspec, kspec, kspec, qt, qt, qt, kt, kt, kt],
      out_specs=[qspec, lspec],
      scratch_shapes=[pltpu.VMEM((block_q, 1), _F32), pltpu.VMEM((block_q, 1), _F32),
                      pltpu.VMEM((block_q, d), _F32)])
  out_shape = [jax.ShapeDtypeStruct(q.shape, out_dtype or q.dtype),
               jax.ShapeDtypeStruct((b, h, sq, 1), _F32)]
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=_cost(q, k, v, 2, out_shape),     # q k^T, p v
      interpret=interpret, name="flash_fwd",
  )(block_summary(q_tok, block_q), block_summary(k_tok, block_k), q, k, v,
    *_q_tok(q_tok), *_k_tok(k_tok))


def _probs(q, k, q_ids, k_ids, lse, causal, sm_scale):
  s = _dot_t(q, k) * sm_scale
  mask = _mask(q_ids, k_ids, causal)
  return jnp.where(mask, jnp.exp(s - lse), 0.0)


def _dq_kernel(qs, ks, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, qpos_ref,
               qbid_ref, kseg_ref, kpos_ref, kbid_ref, dq_ref, dq_sc, *, causal, sm_scale, nq, nk):
  b, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(ki == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, _F32)

  @pl.when(block_needed(qs, ks, b * nq + qi, b * nk + ki, causal))
  def _step():
    k, v = k_ref[...], v_ref[...]
    p = _probs(q_ref[...], k, _read((qseg_ref, qpos_ref, qbid_ref)),
               _read((kseg_ref, kpos_ref, kbid_ref)), lse_ref[...], causal, sm_scale)
    dp = _dot_t(do_ref[...], v)
    ds = p * (dp - delta_ref[...])
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=_F32) * sm_scale

  @pl.when(ki == nk - 1)
  def _done():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_kernel(qs, ks, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, qpos_ref,
                qbid_ref, kseg_ref, kpos_ref, kbid_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, causal,
                sm_scale, nq, nk, g):
  b, ki, gi, qi = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  first = (gi == 0) & (qi == 0)
  last = (gi == g - 1) & (qi == nq - 1)

  @pl.when(first)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, _F32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, _F32)

  @pl.when(block_needed(qs, ks, b * nq + qi, b * nk + ki, causal))
  def _step():
    q, do, v = q_ref[...], do_ref[...], v_ref[...]
    p = _probs(q, k_ref[...], _read((qseg_ref, qpos_ref, qbid_ref)),
               _read((kseg_ref, kpos_ref, kbid_ref)), lse_ref[...], causal, sm_scale)
    dv_sc[...] += _t_dot(p.astype(do.dtype), do)
    dp = _dot_t(do, v)
    ds = p * (dp - delta_ref[...])
    dk_sc[...] += _t_dot(ds.astype(q.dtype), q) * sm_scale

  @pl.when(last)
  def _done():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def flash_bwd(q, k, v, do, lse, delta, q_tok: Tokens, k_tok: Tokens, *, causal: bool,
              sm_scale: float, block_q: int, block_k: int, interpret, out_dtype=None):
  """Backward kernels. q/do [B,H,Sq,Dh], k/v [B,K,Sk,Dh], lse/delta f32 [B,H,Sq,1].

  delta = sum(out * do, -1) of the full attention output (for the ring: the combined output),
  lse likewise the full log-sum-exp. Returns (dq [B,H,Sq,Dh], dk, dv [B,K,Sk,Dh]) in out_dtype
  (default: the input dtypes). dk/dv sum over the H/K query heads sharing each kv head.
  """
  b, h, sq, d = q.shape
  kh, sk = k.shape[1], k.shape[2]
  g = h // kh
  nq, nk = sq // block_q, sk // block_k
  summaries = (block_summary(q_tok, block_q), block_summary(k_tok, block_k))
  toks = (*_q_tok(q_tok), *_k_tok(k_tok))
  common = dict(causal=causal, sm_scale=sm_scale, nq=nq, nk=nk)

  # dq: grid (B, H, nq, nk), reduce over k blocks.
  qspec = pl.BlockSpec((None, None, block_q, d), lambda b_, h_, i, j, *_: (b_, h_, i, 0))
  kspec = pl.BlockSpec((None, None, block_k, d), lambda b_, h_, i, j, *_: (b_, h_ // g, j, 0))
  lspec = pl.BlockSpec((None, None, block_q, 1), lambda b_, h_, i, j, *_: (b_, h_, i, 0))
  qt, kt = _token_specs(block_q, block_k, lambda b_, h_, i, j, *_: (b_, i, 0),
                        lambda b_, h_, i, j, *_: (b_, 0, j))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(b, h, nq, nk),
          in_specs=[qspec, kspec, kspec, qspec, lspec, lspec, qt, qt, qt, kt, kt, kt],
          out_specs=qspec, scratch_shapes=[pltpu.VMEM((block_q, d), _F32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, out_dtype or q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=_cost(q, k, v, 3, [q]),            # q k^T, do v^T, ds k
      interpret=interpret, name="flash_bwd_dq",
  )(*summaries, q, k, v, do, lse, delta, *toks)

  # dk/dv: grid (B, K, nk, G, nq), reduce over the group's heads and the q blocks.
  qspec = pl.BlockSpec((None, None, block_q, d), lambda b_, h_, j, gi, i, *_: (b_, h_ * g + gi, i, 0))
  kspec = pl.BlockSpec((None, None, block_k, d), lambda b_, h_, j, gi, i, *_: (b_, h_, j, 0))
  lspec = pl.BlockSpec((None, None, block_q, 1), lambda b_, h_, j, gi, i, *_: (b_, h_ * g + gi, i, 0))
  qt, kt = _token_specs(block_q, block_k, lambda b_, h_, j, gi, i, *_: (b_, i, 0),
                        lambda b_, h_, j, gi, i, *_: (b_, 0, j))

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, g=g, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(b, kh, nk, g, nq),
          in_specs=[qspec, kspec, kspec, qspec, lspec, lspec, qt, qt, qt, kt, kt, kt],
          out_specs=[kspec, kspec],
          scratch_shapes=[pltpu.VMEM((block_k, d), _F32), pltpu.VMEM((block_k, d), _F32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, out_dtype or k.dtype),
                 jax.ShapeDtypeStruct(v.shape, out_dtype or v.dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      cost_estimate=_cost(q, k, v, 4, [k, v]),         # q k^T, p^T do, do v^T, ds^T q
      interpret=interpret, name="flash_bwd_dkv",
  )(*summaries, q, k, v, do, lse, delta, *toks)
  return dq, dk, dv
