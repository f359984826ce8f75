"""Attention: the mask, the one `attention(..., impl=)` switch, and the attention block.

Mask (shared with the Pallas kernels and the C++ runtime):
  allowed(q, k) = seg[q] == seg[k] and seg[q] != 0
                  and (pos[k] <= pos[q] or (bidir[q] != 0 and bidir[q] == bidir[k]))
The flash and ring kernels (pallas/ring_attention) take the same segment and bidir ids.
GQA/MQA: query head h uses kv head h // (H/K); the reference never materialises repeated
kv heads (q is viewed as [B,S,K,H/K,Dh]). Softmax is f32.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P
from pallas.ring_attention import ops as attention_ops

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import dense, norm, rope

IMPLS = ("xla", "flash", "ring", "ring_xla")


def make_mask(q_segment_ids: jax.Array, k_segment_ids: jax.Array,
              q_positions: jax.Array, k_positions: jax.Array,
              q_bidir_ids: Optional[jax.Array] = None, k_bidir_ids: Optional[jax.Array] = None,
              *, causal: bool = True) -> jax.Array:
  """Segment/causal/bidirectional mask. ids int [B,Sq] and [B,Sk] -> bool [B,Sq,Sk]."""
  qs, ks = q_segment_ids[:, :, None], k_segment_ids[:, None, :]
  allowed = (qs == ks) & (qs != 0)
  if causal:
    visible = k_positions[:, None, :] <= q_positions[:, :, None]
    if q_bidir_ids is not None:
      qb, kb = q_bidir_ids[:, :, None], k_bidir_ids[:, None, :]
      visible = visible | ((qb != 0) & (qb == kb))
    allowed = allowed & visible
  return allowed


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Reference GQA attention. q [B,Sq,H,Dh], k/v [B,Sk,K,Dh], mask bool [B,Sq,Sk]
  -> [B,Sq,H,Dh] in q.dtype. Fully masked query rows (padding) give zeros, as the kernels do,
  so every impl feeds the same values to later layers (the MoE router sees padding too)."""
  b, sq, h, dh = q.shape
  kh = k.shape[2]
  if h % kh:
    raise ValueError(f"attention: {h} query heads not a multiple of {kh} kv heads")
  qg = q.reshape(b, sq, kh, h // kh, dh)
  s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
  s = s * (dh ** -0.5)
  s = jnp.where(mask[:, None, None, :, :], s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  o = jnp.where(jnp.any(mask, axis=-1)[:, :, None, None, None], o, 0.0)
  return o.reshape(b, sq, h, dh).astype(q.dtype)


def _batch_axes(b: int, mesh) -> tuple:
  """Mesh axes the batch dim of activations is split over (per gemini.sharding.RULES)."""
  spec = sharding.logical_to_spec(("batch",), (b,), mesh)[0]
  return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def _flash_on_mesh(q, k, v, segment_ids, bidir_ids, mesh, kw):
  """Runs the single-device flash kernel per shard: batch over the batch axes, heads over
  'tensor' when the kv heads split the same way (or there is one kv head to replicate), so
  the GQA grouping h // (H/K) stays local to each shard."""
  bax = _batch_axes(q.shape[0], mesh) or None
  hspec = sharding.logical_to_spec(("act_heads",), (q.shape[2],), mesh)[0]
  kspec = sharding.logical_to_spec(("act_kv_heads",), (k.shape[2],), mesh)[0]
  if k.shape[2] == 1:
    kspec = None
  elif hspec != kspec:
    hspec = kspec = None
  qs, ks, ss = P(bax, None, hspec, None), P(bax, None, kspec, None), P(bax, None)
  if bidir_ids is None:
    bidir_ids = jnp.zeros_like(segment_ids)
  local = lambda q, k, v, seg, bid: attention_ops.flash_attention(q, k, v, seg, bid, **kw)
  return jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, ss, ss), out_specs=qs,
                       check_vma=False)(q, k, v, segment_ids, bidir_ids)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
              positions: Optional[jax.Array] = None, bidir_ids: Optional[jax.Array] = None,
              *, causal: bool = True, impl: str = "xla", mesh=None) -> jax.Array:
  """Self-attention over one packed sequence batch.

  q [B,S,H,Dh], k/v [B,S,K,Dh], segment_ids int32 [B,S] (0 = padding), positions int32 [B,S]
  (default arange; causality is by position), bidir_ids int32 [B,S] or None -> [B,S,H,Dh].
  impl: "xla" (reference), "flash" (Pallas flash kernel; with a mesh it runs per shard) or
  "ring" (context-parallel ring over the mesh axis "context") or "ring_xla" (the same ring
  with XLA attention per ring step instead of the flash kernel: fast where kernels are only
  interpreted, as on the CPU). The kernels are causal by
  index, which equals the position rule when positions increase by one inside each segment
  (how batches are packed); bidir_ids go to them unchanged.
  """
  if impl == "xla":
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), segment_ids.shape)
    mask = make_mask(segment_ids, segment_ids, positions, positions, bidir_ids, bidir_ids,
                     causal=causal)
    return dot_product_attention(q, k, v, mask)
  if impl == "flash":
    kw = {"causal": causal, "interpret": sharding.kernel_interpret(mesh)}
    if mesh is not None:
      return _flash_on_mesh(q, k, v, segment_ids, bidir_ids, mesh, kw)
    return attention_ops.flash_attention(q, k, v, segment_ids, bidir_ids, **kw)
  if impl in ("ring", "ring_xla"):
    if mesh is None or "context" not in mesh.shape:
      raise ValueError(f"attention impl={impl!r} needs a mesh with a 'context' axis")
    return attention_ops.ring_attention(
        q, k, v, segment_ids, bidir_ids, mesh=mesh, axis_name="context", causal=causal,
        interpret=sharding.kernel_interpret(mesh), batch_axes=_batch_axes(q.shape[0], mesh),
        blocks="xla" if impl == "ring_xla" else "pallas")
  raise ValueError(f"attention impl={impl!r}: expected one of {IMPLS}")


def project_qkv(params: dict, x: jax.Array, positions: jax.Array, cfg: ModelConfig, *,
                int4_impl: str = "xla"):
  """x [B,S,D] -> q [B,S,H,Dh], k [B,S,K,Dh] (both rotated; RMS-normed per head first when
  cfg.qk_norm), v [B,S,K,Dh], in x.dtype. Weights may be float or int4 (gemini.model.dense)."""
  h, kh, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  q = dense.dense(x, params["wq"], 1, (h, dh), impl=int4_impl)
  k = dense.dense(x, params["wk"], 1, (kh, dh), impl=int4_impl)
  v = dense.dense(x, params["wv"], 1, (kh, dh), impl=int4_impl)
  if cfg.qk_norm:
    q = norm.rms_norm(params["q_norm"], q, cfg.norm_eps)
    k = norm.rms_norm(params["k_norm"], k, cfg.norm_eps)
  return rope.apply_rope(q, positions, cfg.rope_base), rope.apply_rope(k, positions, cfg.rope_base), v


def output_projection(params: dict, o: jax.Array, cfg: ModelConfig, *,
                      int4_impl: str = "xla") -> jax.Array:
  """o [B,S,H,Dh] -> [B,S,D] in o.dtype."""
  return dense.dense(o, params["wo"], 2, (cfg.d_model,), impl=int4_impl)


def attention_block(params: dict, x: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                    bidir_ids: Optional[jax.Array], cfg: ModelConfig, *, impl: str = "xla",
                    mesh=None, int4_impl: str = "xla") -> jax.Array:
  """Projections + RoPE + attention + output projection. x [B,S,D] -> [B,S,D]. The attention
  output is named 'attention_out' for the save_attention_out remat policy."""
  q, k, v = project_qkv(params, x, positions, cfg, int4_impl=int4_impl)
  q = sharding.constrain(q, ("batch", "seq", "act_heads", None), mesh)
  k = sharding.constrain(k, ("batch", "seq", "act_kv_heads", None), mesh)
  v = sharding.constrain(v, ("batch", "seq", "act_kv_heads", None), mesh)
  o = attention(q, k, v, segment_ids, positions, bidir_ids, causal=True, impl=impl, mesh=mesh)
  o = checkpoint_name(o, "attention_out")
  return output_projection(params, o, cfg, int4_impl=int4_impl)
