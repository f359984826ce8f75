"""Public attention ops: single-device flash attention and the context-parallel ring.

Both take the model's BSHD layout (q [B,S,H,Dh], k/v [B,S,K,Dh]) with segment ids and
bidirectional item ids [B,S], pad the sequence to the block size with padding tokens (segment
id 0), run the BHSD kernels of `kernel.py` (mask rule in its docstring) and are
differentiable through `jax.custom_vjp` (the backward runs the dq and dk/dv kernels with the
forward's log-sum-exp).

`interpret=None` means: interpret the kernels when jax's default backend is the CPU. Pass
`interpret=False` to compile them for a TPU (e.g. ahead-of-time on TPU topology devices from
a CPU host, where the default backend is still the CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from pallas.ring_attention import kernel
from pallas.ring_attention import layout as layout_lib
from pallas.ring_attention import reference
from pallas.ring_attention import ring_kernel
from pallas.ring_attention.kernel import Tokens

_F32 = jnp.float32
IMPLS = ("ppermute", "dma")
BLOCKS = ("pallas", "xla")


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _check_shapes(name, q, k, v, segment_ids, bidir_ids):
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
    raise ValueError(f"{name}: expected q [B,S,H,Dh], k/v [B,S,K,Dh], got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}")
  b, s, h, d = q.shape
  if k.shape[0] != b or k.shape[1] != s or k.shape[3] != d:
    raise ValueError(f"{name}: k/v {k.shape} do not match q {q.shape} in batch, seq or head_dim")
  if h % k.shape[2]:
    raise ValueError(f"{name}: n_heads={h} is not a multiple of kv heads={k.shape[2]}")
  for what, ids in (("segment_ids", segment_ids), ("bidir_ids", bidir_ids)):
    if ids is not None and ids.shape != (b, s):
      raise ValueError(f"{name}: {what} shape {ids.shape}, expected {(b, s)}")


def _ids(ids, b, s, fill):
  """int32 [B,S] ids, `fill` everywhere when None."""
  return jnp.full((b, s), fill, jnp.int32) if ids is None else ids.astype(jnp.int32)


def _resolve_interpret(interpret):
  return jax.default_backend() == "cpu" if interpret is None else interpret


def _block_sizes(unit_len: int, block_q: int, block_k: int):
  """Blocks no larger than needed, and the padded unit length they both divide."""
  bq = min(block_q, _round_up(unit_len, 8))
  bk = min(block_k, _round_up(unit_len, 8))
  return bq, bk, _round_up(unit_len, math.lcm(bq, bk))


def _pad_seq(x, s_pad):
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, s_pad - x.shape[1])
  return jnp.pad(x, pad)


def _to_bhsd(x):
  return jnp.transpose(x, (0, 2, 1, 3))


@dataclasses.dataclass(frozen=True)
class _Cfg:
  causal: bool
  sm_scale: float
  block_q: int
  block_k: int
  interpret: Any
  axis_name: Optional[str] = None
  n: int = 1
  impl: str = "ppermute"
  blocks: str = "pallas"


# ---------------------------------------------------------------- single device


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, tok: Tokens, cfg: _Cfg):
  return _flash_fwd(q, k, v, tok, cfg)[0]


def _flash_fwd(q, k, v, tok, cfg):
  o, lse = kernel.flash_fwd(q, k, v, tok, tok, causal=cfg.causal, sm_scale=cfg.sm_scale,
                            block_q=cfg.block_q, block_k=cfg.block_k, interpret=cfg.interpret)
  return o, (q, k, v, tok, o, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, tok, o, lse = res
  delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1, keepdims=True)
  dq, dk, dv = kernel.flash_bwd(q, k, v, do, lse, delta, tok, tok, causal=cfg.causal,
                                sm_scale=cfg.sm_scale, block_q=cfg.block_q,
                                block_k=cfg.block_k, interpret=cfg.interpret)
  return dq, dk, dv, Tokens(None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    segment_ids: Optional[jax.Array] = None,
                    bidir_ids: Optional[jax.Array] = None, *, causal: bool = True,
                    sm_scale: Optional[float] = None, block_q: int = 128, block_k: int = 128,
                    interpret=None) -> jax.Array:
  """Blockwise attention on one device.

  q [B,S,H,Dh], k/v [B,S,K,Dh] (H % K == 0, kv head h // (H/K) serves query head h),
  segment_ids int32 [B,S] (0 = padding; None = one segment), bidir_ids int32 [B,S] (media
  items: tokens sharing a nonzero id see each other regardless of causality; None = no
  items). Returns [B,S,H,Dh] in q.dtype; rows with no allowed key (padding) are zero. Any S
  works: the kernel pads to the blocks.
  """
  _check_shapes("flash_attention", q, k, v, segment_ids, bidir_ids)
  b, s, _, d = q.shape
  bq, bk, s_pad = _block_sizes(s, block_q, block_k)
  tok = Tokens(_pad_seq(_ids(segment_ids, b, s, 1), s_pad),
               jnp.broadcast_to(jnp.arange(s_pad, dtype=jnp.int32), (b, s_pad)),
               _pad_seq(_ids(bidir_ids, b, s, 0), s_pad))
  cfg = _Cfg(causal, float(d ** -0.5 if sm_scale is None else sm_scale), bq, bk,
             _resolve_interpret(interpret))
  qh, kh, vh = (_to_bhsd(_pad_seq(x, s_pad)) for x in (q, k, v))
  o = _flash(qh, kh, vh, tok, cfg)
  return _to_bhsd(o)[:, :s]


# ---------------------------------------------------------------- ring


def _rotate(xs, cfg):
  """Send every array one step right along the ring (device i -> i+1)."""
  perm = [(i, (i + 1) % cfg.n) for i in range(cfg.n)]
  return [lax.ppermute(x, cfg.axis_name, perm) for x in xs]


def _merge(o, lse, o2, lse2):
  """Combine two partial attentions over disjoint key sets by log-sum-exp (f32)."""
  new = jnp.logaddexp(lse, lse2)
  return o * jnp.exp(lse - new) + o2 * jnp.exp(lse2 - new), new


def _ring_fwd_ppermute(q, k, v, tok: Tokens, cfg: _Cfg):
  """Reference ring: n flash calls, kv (and its tokens) passed right with ppermute."""
  kw = dict(causal=cfg.causal, sm_scale=cfg.sm_scale, block_q=cfg.block_q,
            block_k=cfg.block_k, interpret=cfg.interpret, out_dtype=_F32)
  o, lse = kernel.flash_fwd(q, k, v, tok, tok, **kw)

  def step(_, carry):
    o, lse, k, v, ktok = carry
    k, v, *ktok = _rotate([k, v, *ktok], cfg)
    ktok = Tokens(*ktok)
    o2, lse2 = kernel.flash_fwd(q, k, v, tok, ktok, **kw)
    o, lse = _merge(o, lse, o2, lse2)
    return o, lse, k, v, ktok

  o, lse, *_ = lax.fori_loop(1, cfg.n, step, (o, lse, k, v, tok))
  return o, lse


def _ring_bwd(q, k, v, tok: Tokens, o, lse, do, cfg: _Cfg):
  """dq stays home; dk/dv accumulators travel with their kv block and come home at the end."""
  kw = dict(causal=cfg.causal, sm_scale=cfg.sm_scale, block_q=cfg.block_q,
            block_k=cfg.block_k, interpret=cfg.interpret, out_dtype=_F32)
  delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1, keepdims=True)
  dq, dk, dv = kernel.flash_bwd(q, k, v, do, lse, delta, tok, tok, **kw)

  def step(_, carry):
    dq, dk, dv, k, v, ktok = carry
    k, v, dk, dv, *ktok = _rotate([k, v, dk, dv, *ktok], cfg)
    ktok = Tokens(*ktok)
    dq2, dk2, dv2 = kernel.flash_bwd(q, k, v, do, lse, delta, tok, ktok, **kw)
    return dq + dq2, dk + dk2, dv + dv2, k, v, ktok

  dq, dk, dv, *_ = lax.fori_loop(1, cfg.n, step, (dq, dk, dv, k, v, tok))
  if cfg.n > 1:
    dk, dv = _rotate([dk, dv], cfg)   # After n-1 steps they sit one device left of home.
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _ring_xla(q, k, v, tok: Tokens, cfg: _Cfg):
  """The ppermute ring with XLA block attention, in BSHD: the schedule of
  `_ring_fwd_ppermute` (kv and its tokens passed right, partials merged by log-sum-exp) with
  `reference.block_attention` for each step, differentiated by JAX (a ppermute's transpose is
  the reverse ring, so the backward is a ring too). Each step is rematerialised so the
  backward holds one step's [Sq, Sk] scores at a time. For hosts where interpreted kernels
  are slow (the CPU): the communication is the same, only the block math differs."""
  block = jax.checkpoint(functools.partial(reference.block_attention, causal=cfg.causal,
                                           sm_scale=cfg.sm_scale))

  def partial_attention(k, v, ktok):
    o, lse = block(q, k, v, tok, ktok)
    return o, jnp.transpose(lse, (0, 2, 1))[..., None]      # lse as [B,S,H,1], like o

  def step(_, carry):
    o, lse, k, v, ktok = carry
    k, v, *ktok = _rotate([k, v, *ktok], cfg)
    ktok = Tokens(*ktok)
    o, lse = _merge(o, lse, *partial_attention(k, v, ktok))
    return o, lse, k, v, ktok

  o, lse = partial_attention(k, v, tok)
  o, *_ = lax.fori_loop(1, cfg.n, step, (o, lse, k, v, tok))
  return o.astype(q.dtype)


def _ring_forward(q, k, v, tok, cfg):
  if cfg.impl == "dma":
    return ring_kernel.ring_flash_fwd(
        q, k, v, tok, axis_name=cfg.axis_name, n=cfg.n, causal=cfg.causal,
        sm_scale=cfg.sm_scale, block_q=cfg.block_q, block_k=cfg.block_k,
        interpret=cfg.interpret)
  return _ring_fwd_ppermute(q, k, v, tok, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_local(q, k, v, tok: Tokens, cfg: _Cfg):
  o, _ = _ring_forward(q, k, v, tok, cfg)
  return o.astype(q.dtype)


def _ring_local_fwd(q, k, v, tok, cfg):
  o, lse = _ring_forward(q, k, v, tok, cfg)
  o = o.astype(q.dtype)
  return o, (q, k, v, tok, o, lse)


def _ring_local_bwd(cfg, res, do):
  q, k, v, tok, o, lse = res
  dq, dk, dv = _ring_bwd(q, k, v, tok, o, lse, do, cfg)
  return dq, dk, dv, Tokens(None, None, None)


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                   segment_ids: Optional[jax.Array] = None,
                   bidir_ids: Optional[jax.Array] = None, *, mesh: jax.sharding.Mesh,
                   axis_name: str = "context", causal: bool = True,
                   sm_scale: Optional[float] = None, impl: str = "ppermute",
                   layout: str = "zigzag", interpret=None, block_q: int = 128,
                   block_k: int = 128, batch_axes: Sequence[str] = (),
                   blocks: str = "pallas") -> jax.Array:
  """Context-parallel attention: the sequence is split over mesh axis `axis_name`.

  q [B,S,H,Dh], k/v [B,S,K,Dh], segment_ids int32 [B,S] (0 = padding), bidir_ids int32 [B,S]
  (media item ids, 0 = none; as in `flash_attention`), all in natural token order (global
  arrays, any sharding). The op pads S, permutes the tokens into `layout`
  (see layout.py; zigzag balances causal work), runs the ring inside `jax.shard_map` — every
  device keeps its queries and passes kv blocks right around the ring — and returns
  [B,S,H,Dh] in natural order. impl="ppermute": `lax.ppermute` between flash kernel calls,
  merged by log-sum-exp; impl="dma": one Pallas kernel per device that remote-DMAs the next
  kv block to its neighbour while computing on the current one. The backward pass (both
  impls) is a ppermute ring of the dq and dk/dv kernels whose dk/dv accumulators travel with
  their kv block. `batch_axes`: mesh axes the batch dim is sharded over (others replicate).
  blocks="xla" (with impl="ppermute"): each ring step's attention is XLA instead of the flash
  kernel, differentiated by JAX (`_ring_xla`) — the same ring where interpreted kernels are slow.
  """
  _check_shapes("ring_attention", q, k, v, segment_ids, bidir_ids)
  if impl not in IMPLS:
    raise ValueError(f"ring_attention: impl={impl!r}, expected one of {IMPLS}")
  if blocks not in BLOCKS or (blocks == "xla" and impl != "ppermute"):
    raise ValueError(f"ring_attention: blocks={blocks!r} with impl={impl!r}; blocks is one of "
                     f"{BLOCKS}, and 'xla' rides the ppermute ring")
  if axis_name not in mesh.shape:
    raise ValueError(f"ring_attention: mesh axes {tuple(mesh.shape)} have no {axis_name!r}")
  b, s, _, d = q.shape
  n = mesh.shape[axis_name]
  unit = layout_lib.chunk_multiple(n, layout)
  bq, bk, chunk = _block_sizes(-(-s // unit), block_q, block_k)
  s_pad = chunk * unit
  cfg = _Cfg(causal, float(d ** -0.5 if sm_scale is None else sm_scale), bq, bk,
             _resolve_interpret(interpret), axis_name, n, impl, blocks)
  bax = tuple(batch_axes) or None
  spec4, spec2 = P(bax, axis_name, None, None), P(bax, axis_name)
  args = [_pad_seq(x, s_pad) for x in (q, k, v, _ids(segment_ids, b, s, 1))]
  args.append(jnp.broadcast_to(jnp.arange(s_pad, dtype=jnp.int32), (b, s_pad)))
  args.append(_pad_seq(_ids(bidir_ids, b, s, 0), s_pad))
  # Zigzag is entered and left inside shard_map with two ppermutes per array (each device
  # sends its two natural chunks to their owners): a global gather would materialise the
  # whole sequence on every device. Other layouts use the gather.
  local_zigzag = layout == "zigzag" and n > 1
  if not local_zigzag:
    perm = layout_lib.permutation(s_pad, n, layout)
    args = [x[:, perm] for x in args]

  def local(q, k, v, seg, pos, bid):
    if local_zigzag:
      q, k, v, seg, pos, bid = (_zigzag_enter(x, axis_name, n) for x in (q, k, v, seg, pos, bid))
    tok = Tokens(seg, pos, bid)
    if blocks == "xla":
      o = _ring_xla(q, k, v, tok, cfg)
    else:
      o = _to_bhsd(_ring_local(_to_bhsd(q), _to_bhsd(k), _to_bhsd(v), tok, cfg))
    return _zigzag_leave(o, axis_name, n) if local_zigzag else o

  out = jax.shard_map(local, mesh=mesh, in_specs=(spec4, spec4, spec4, spec2, spec2, spec2),
                      out_specs=spec4, check_vma=False)(*args)
  if not local_zigzag:
    out = out[:, layout_lib.inverse_permutation(perm)]
  return out[:, :s]


def _zigzag_owner(chunk: int, n: int) -> int:
  """Device that holds global chunk `chunk` (of 2n) in the zigzag layout."""
  return chunk if chunk < n else 2 * n - 1 - chunk


def _zigzag_enter(x, axis_name, n):
  """Natural shard (chunks 2d, 2d+1) -> zigzag shard (chunks d, 2n-1-d), along dim 1."""
  c = x.shape[1] // 2
  even = lax.ppermute(x[:, :c], axis_name, [(d, _zigzag_owner(2 * d, n)) for d in range(n)])
  odd = lax.ppermute(x[:, c:], axis_name, [(d, _zigzag_owner(2 * d + 1, n)) for d in range(n)])
  # Device d's first chunk d is even iff d is; its second chunk 2n-1-d has the other parity.
  d_even = lax.rem(lax.axis_index(axis_name), 2) == 0
  return jnp.concatenate([jnp.where(d_even, even, odd), jnp.where(d_even, odd, even)], axis=1)


def _zigzag_leave(y, axis_name, n):
  """Inverse of `_zigzag_enter`: zigzag shard -> natural shard, along dim 1."""
  c = y.shape[1] // 2
  d_even = lax.rem(lax.axis_index(axis_name), 2) == 0
  first, second = y[:, :c], y[:, c:]
  even_chunk = jnp.where(d_even, first, second)
  odd_chunk = jnp.where(d_even, second, first)
  to_even = [(d, (d if d % 2 == 0 else 2 * n - 1 - d) // 2) for d in range(n)]
  to_odd = [(d, (2 * n - 1 - d if d % 2 == 0 else d) // 2) for d in range(n)]
  return jnp.concatenate([lax.ppermute(even_chunk, axis_name, to_even),
                          lax.ppermute(odd_chunk, axis_name, to_odd)], axis=1)
