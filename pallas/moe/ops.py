"""Differentiable MoE ops: `gmm` with a custom VJP, and the (expert-parallel) MoE FFN.

    moe_ffn(x [T,D], expert_ids [T,k], gates [T,k], w_gate/w_up [E,D,F], w_down [E,F,D])
      mesh=None : sort assignments by expert -> gmm x3 -> unsort -> combine with gates
      mesh      : inside jax.shard_map, per device (tokens sharded over `token_axes`):
                  sort locally -> all_gather counts over `expert_axis` -> ragged exchange
                  (Pallas remote DMA, or lax.ragged_all_to_all) or fixed-capacity
                  lax.all_to_all -> gmm over the local experts -> exchange back -> combine.

See README.md for the API contract, the receive-buffer bound and the capacity rule.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from pallas.moe import all_to_all as a2a
from pallas.moe import gmm as gmm_lib
from pallas.moe import reference


def resolve_interpret(interpret):
  """-> (gmm_interpret, exchange_interpret).

  None: Mosaic on TPU, interpreters elsewhere. True: interpreters. An InterpretParams is
  used for the remote-DMA exchange kernel. The local gmm kernels always use the plain
  interpreter (interpret=True) off TPU: TPU interpret mode synchronises all devices around
  every kernel, which deadlocks against XLA:CPU collectives (lax.all_to_all) in between.
  """
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  if interpret is False:
    return False, False
  if isinstance(interpret, pltpu.InterpretParams):
    return True, interpret
  return True, pltpu.InterpretParams(dma_execution_mode="on_wait")


# ---------------------------------------------------------------------------------------
# gmm with a custom VJP.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def gmm(lhs, rhs, group_sizes, tiling=None, transpose_rhs=False, interpret=False):
  """Differentiable grouped matmul: [m,k] x [e,k,n] (or [e,n,k] if transpose_rhs) -> [m,n].

  group_sizes int32 [e] (sum <= m); rows past the sum give zeros. dtype = lhs.dtype."""
  return gmm_lib.gmm(lhs, rhs, group_sizes, tiling=tiling, transpose_rhs=transpose_rhs,
                     interpret=interpret)


def _gmm_fwd(lhs, rhs, group_sizes, tiling, transpose_rhs, interpret):
  out = gmm(lhs, rhs, group_sizes, tiling, transpose_rhs, interpret)
  return out, (lhs, rhs, group_sizes)


def _gmm_bwd(tiling, transpose_rhs, interpret, res, g):
  lhs, rhs, group_sizes = res
  g = g.astype(lhs.dtype)
  dlhs = gmm_lib.gmm(g, rhs, group_sizes, tiling=tiling, transpose_rhs=not transpose_rhs,
                     interpret=interpret)
  if transpose_rhs:
    drhs = gmm_lib.tgmm(g, lhs, group_sizes, tiling=tiling, interpret=interpret)
  else:
    drhs = gmm_lib.tgmm(lhs, g, group_sizes, tiling=tiling, interpret=interpret)
  return dlhs.astype(lhs.dtype), drhs.astype(rhs.dtype), None


gmm.defvjp(_gmm_fwd, _gmm_bwd)


def expert_ffn(xs, group_sizes, w_gate, w_up, w_down, *, activation, tiling=None,
               interpret=False):
  """Gated MLP per group: rows xs [m,D] sorted by expert; weights [e,D,F], [e,F,D].
  Returns [m,D] (xs.dtype); rows past sum(group_sizes) are zero."""
  act = reference.activation_fn(activation)
  g = gmm(xs, w_gate, group_sizes, tiling, False, interpret)
  u = gmm(xs, w_up, group_sizes, tiling, False, interpret)
  h = (act(g.astype(jnp.float32)) * u.astype(jnp.float32)).astype(xs.dtype)
  return gmm(h, w_down, group_sizes, tiling, False, interpret)


# ---------------------------------------------------------------------------------------
# Ragged exchange with VJPs (dispatch and combine are each other's transpose).


def _dispatch_impl(x, counts_all, static):
  axis_name, mesh_axes, interpret = static
  p, e = counts_all.shape
  me = lax.axis_index(axis_name)
  out_rows = p * x.shape[0]
  recv = a2a.ragged_exchange(x, a2a.dispatch_plan(counts_all, me, e // p), out_rows=out_rows,
                             axis_name=axis_name, mesh_axes=mesh_axes, interpret=interpret)
  total = jnp.sum(a2a.local_group_sizes(counts_all, me, e // p))
  return jnp.where(jnp.arange(out_rows)[:, None] < total, recv, jnp.zeros_like(recv))


def _combine_impl(y, counts_all, static):
  axis_name, mesh_axes, interpret = static
  p, e = counts_all.shape
  me = lax.axis_index(axis_name)
  return a2a.ragged_exchange(y, a2a.combine_plan(counts_all, me, e // p),
                             out_rows=y.shape[0] // p, axis_name=axis_name,
                             mesh_axes=mesh_axes, interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def ragged_dispatch(x, counts_all, static):
  """x [N,D] expert-sorted local rows -> [P*N, D] receive buffer (zero past the total)."""
  return _dispatch_impl(x, counts_all, static)


ragged_dispatch.defvjp(lambda x, c, s: (_dispatch_impl(x, c, s), c),
                       lambda s, c, g: (_combine_impl(g, c, s), None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def ragged_combine(y, counts_all, static):
  """y [P*N, D] expert outputs in receive layout -> [N, D] back in local sorted order."""
  return _combine_impl(y, counts_all, static)


ragged_combine.defvjp(lambda y, c, s: (_combine_impl(y, c, s), c),
                      lambda s, c, g: (_dispatch_impl(g, c, s), None))


# ---------------------------------------------------------------------------------------
# The MoE FFN.


def _sort_by_expert(x, expert_ids, num_experts):
  """Token-major assignments sorted by expert: (xs [T*k,D], order [T*k], counts [E])."""
  t, k = expert_ids.shape
  ids = expert_ids.reshape(t * k)
  order = jnp.argsort(ids, stable=True)
  counts = jnp.bincount(ids, length=num_experts).astype(jnp.int32)
  return x[order // k], order, counts


def _unsort_combine(o, order, gates):
  """o [T*k, D] in sorted order -> y [T, D] = sum_j gates[t,j] * o[t,j]."""
  t, k = gates.shape
  unsorted = jnp.zeros_like(o).at[order].set(o)
  y = jnp.sum(unsorted.reshape(t, k, -1).astype(jnp.float32) * gates[:, :, None].astype(jnp.float32),
              axis=1)
  return y.astype(o.dtype)


def _capacity_slots(expert_ids, num_experts, cap):
  """Rank-major slots in an [E*C] buffer; dropped assignments get slot E*C (a trash row).
  Returns (slot [k*T] rank-major, keep [k*T])."""
  t, k = expert_ids.shape
  ids = expert_ids.T.reshape(k * t)
  onehot = jax.nn.one_hot(ids, num_experts, dtype=jnp.int32)
  rank = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)
  keep = rank < cap
  return jnp.where(keep, ids * cap + rank, num_experts * cap), keep


def _capacity_local(x, expert_ids, gates, ffn_on_buffer, num_experts, capacity_factor):
  """Capacity dispatch around `ffn_on_buffer([E,C,D]) -> [E,C,D]`. Returns (y, dropped)."""
  t, k = expert_ids.shape
  d = x.shape[1]
  cap = reference.capacity(t, k, num_experts, capacity_factor)
  slot, keep = _capacity_slots(expert_ids, num_experts, cap)
  trash = num_experts * cap
  buf = jnp.zeros((trash + 1, d), x.dtype).at[slot].set(jnp.tile(x, (k, 1)), mode="drop")
  out = ffn_on_buffer(buf[:trash].reshape(num_experts, cap, d))
  out = jnp.concatenate([out.reshape(trash, d), jnp.zeros((1, d), out.dtype)])
  per = out[slot].reshape(k, t, d).astype(jnp.float32)
  y = jnp.sum(per * gates.T[:, :, None].astype(jnp.float32), axis=0).astype(x.dtype)
  return y, jnp.sum(~keep).astype(jnp.int32), cap


def _check_inputs(x, expert_ids, gates, w_gate, w_up, w_down, activation, mode):
  t, d = x.shape
  e, d2, f = w_gate.shape
  problems = []
  if expert_ids.ndim != 2 or expert_ids.shape[0] != t:
    problems.append(f"expert_ids shape {expert_ids.shape} must be [T={t}, k]")
  if gates.shape != expert_ids.shape:
    problems.append(f"gates shape {gates.shape} != expert_ids shape {expert_ids.shape}")
  if d2 != d or w_up.shape != w_gate.shape or w_down.shape != (e, f, d):
    problems.append(f"weights w_gate {w_gate.shape} w_up {w_up.shape} w_down {w_down.shape} "
                    f"do not match [E,D={d},F] / [E,F,D]")
  if not jnp.issubdtype(expert_ids.dtype, jnp.integer):
    problems.append(f"expert_ids dtype {expert_ids.dtype} must be integer")
  if activation not in ("gelu", "silu"):
    problems.append(f"activation={activation!r}: expected 'gelu' or 'silu'")
  if mode not in ("dropless", "capacity"):
    problems.append(f"mode={mode!r}: expected 'dropless' or 'capacity'")
  if problems:
    raise ValueError("pallas.moe.ops.moe_ffn: " + "; ".join(problems))


def moe_ffn(x, expert_ids, gates, w_gate, w_up, w_down, *, activation="gelu", mesh=None,
            expert_axis="expert", token_axes: Optional[Sequence[str]] = None,
            mode="dropless", capacity_factor=1.25, exchange="pallas", tiling=None,
            interpret=None):
  """Mixture-of-experts gated FFN (see README.md for the full contract).

  Args:
    x: [T, D]; expert_ids: int32 [T, k]; gates: [T, k] combine weights.
    w_gate, w_up: [E, D, F]; w_down: [E, F, D] (cast to x.dtype for the matmuls).
    mesh: None (single device) or a Mesh; tokens are sharded over `token_axes`
      (default: all mesh axes), experts over `expert_axis` (absent or size 1 = no exchange).
    mode: "dropless" | "capacity" (C = ceil(cf * T_shard * k / E) per token shard).
    exchange: "pallas" (remote-DMA kernel) | "ragged_all_to_all" (XLA; TPU/GPU only).
  Returns:
    y [T, D] (x.dtype), metrics {tokens_per_expert int32 [E], tokens_dropped int32 [],
    bytes_moved float32 []: activation bytes sent between devices, both ways, all devices}.
  """
  _check_inputs(x, expert_ids, gates, w_gate, w_up, w_down, activation, mode)
  gmm_interpret, interpret = resolve_interpret(interpret)
  e = w_gate.shape[0]
  expert_ids = expert_ids.astype(jnp.int32)
  w_gate, w_up, w_down = (w.astype(x.dtype) for w in (w_gate, w_up, w_down))
  ffn = functools.partial(expert_ffn, activation=activation, tiling=tiling,
                          interpret=gmm_interpret)
  if mesh is None:
    return _moe_local(x, expert_ids, gates, w_gate, w_up, w_down, ffn, mode, capacity_factor)
  return _moe_sharded(x, expert_ids, gates, w_gate, w_up, w_down, ffn, mesh=mesh,
                      expert_axis=expert_axis, token_axes=token_axes, mode=mode,
                      capacity_factor=capacity_factor, exchange=exchange, interpret=interpret)


def _moe_local(x, expert_ids, gates, w_gate, w_up, w_down, ffn, mode, capacity_factor):
  e = w_gate.shape[0]
  tpe = jnp.bincount(expert_ids.reshape(-1), length=e).astype(jnp.int32)
  zero = jnp.zeros((), jnp.int32)
  no_bytes = jnp.zeros((), jnp.float32)
  if mode == "dropless":
    xs, order, counts = _sort_by_expert(x, expert_ids, e)
    y = _unsort_combine(ffn(xs, counts, w_gate, w_up, w_down), order, gates)
    dropped = zero
  else:
    def on_buffer(buf):
      ee, c, d = buf.shape
      sizes = jnp.full((ee,), c, jnp.int32)
      return ffn(buf.reshape(ee * c, d), sizes, w_gate, w_up, w_down).reshape(ee, c, d)
    y, dropped, _ = _capacity_local(x, expert_ids, gates, on_buffer, e, capacity_factor)
  return y, dict(tokens_per_expert=tpe, tokens_dropped=dropped, bytes_moved=no_bytes)


def _moe_sharded(x, expert_ids, gates, w_gate, w_up, w_down, ffn, *, mesh, expert_axis,
                 token_axes, mode, capacity_factor, exchange, interpret):
  e = w_gate.shape[0]
  names = tuple(mesh.axis_names)
  ep = mesh.shape[expert_axis] if expert_axis in names else 1
  token_axes = tuple(token_axes) if token_axes is not None else names
  n_shards = 1
  for a in token_axes:
    n_shards *= mesh.shape[a]
  t = x.shape[0]
  if t % n_shards:
    raise ValueError(f"pallas.moe.ops.moe_ffn: T={t} tokens not divisible by the {n_shards} "
                     f"token shards of mesh axes {token_axes}")
  if e % ep:
    raise ValueError(f"pallas.moe.ops.moe_ffn: E={e} experts not divisible by mesh axis "
                     f"{expert_axis!r} of size {ep}")
  if exchange not in ("pallas", "ragged_all_to_all"):
    raise ValueError(f"pallas.moe.ops.moe_ffn: exchange={exchange!r}: expected 'pallas' or "
                     f"'ragged_all_to_all'")
  tok = P(token_axes)
  wspec = P(expert_axis) if ep > 1 else P()
  static = (expert_axis, names, interpret)

  def local(xl, ids, gl, wg, wu, wd):
    itemsize = xl.dtype.itemsize
    d = xl.shape[1]
    tpe = lax.psum(jnp.bincount(ids.reshape(-1), length=e).astype(jnp.int32), token_axes)
    if mode == "dropless":
      xs, order, counts = _sort_by_expert(xl, ids, e)
      if ep == 1:
        o = ffn(xs, counts, wg, wu, wd)
        sent = jnp.zeros((), jnp.float32)
      else:
        me = lax.axis_index(expert_axis)
        counts_all = lax.all_gather(counts, expert_axis)                     # [P, E]
        gs = a2a.local_group_sizes(counts_all, me, e // ep)
        n = xs.shape[0]
        if exchange == "pallas":
          recv = ragged_dispatch(xs, counts_all, static)
          o = ragged_combine(ffn(recv, gs, wg, wu, wd), counts_all, static)
        else:
          recv = a2a.xla_ragged_dispatch(xs, counts_all, me, out_rows=ep * n, axis_name=expert_axis)
          o = a2a.xla_ragged_combine(ffn(recv, gs, wg, wu, wd), counts_all, me, out_rows=n,
                                     axis_name=expert_axis)
        own = jnp.sum(counts.reshape(ep, e // ep)[me])
        sent = 2.0 * (n - own).astype(jnp.float32) * d * itemsize            # there and back
      y = _unsort_combine(o, order, gl)
      dropped = jnp.zeros((), jnp.int32)
    else:
      def on_buffer(buf):                                                    # [E, C, D]
        _, c, _ = buf.shape
        el = e // ep
        if ep > 1:
          buf = lax.all_to_all(buf, expert_axis, 0, 0, tiled=True)           # [P*El, C, D] by src
          buf = buf.reshape(ep, el, c, d).transpose(1, 0, 2, 3)              # [El, P, C, D]
        rows = buf.reshape(el * ep * c, d)
        sizes = jnp.full((el,), ep * c, jnp.int32)
        out = ffn(rows, sizes, wg, wu, wd).reshape(el, ep, c, d)
        if ep > 1:
          out = out.transpose(1, 0, 2, 3).reshape(e, c, d)
          out = lax.all_to_all(out, expert_axis, 0, 0, tiled=True)
        return out.reshape(e, c, d)
      y, dropped, cap = _capacity_local(xl, ids, gl, on_buffer, e, capacity_factor)
      dropped = lax.psum(dropped, token_axes)
      sent = jnp.asarray(2.0 * (ep - 1) * (e // ep) * cap * d * itemsize, jnp.float32)
    # f32: at Pro scale a step moves tens of GB, past int32.
    moved = lax.psum(jnp.asarray(sent, jnp.float32), names)
    return y, tpe, dropped, moved

  fn = jax.shard_map(local, mesh=mesh, in_specs=(tok, tok, tok, wspec, wspec, wspec),
                     out_specs=(tok, P(), P(), P()), check_vma=False)
  y, tpe, dropped, moved = fn(x, expert_ids, gates, w_gate, w_up, w_down)
  return y, dict(tokens_per_expert=tpe, tokens_dropped=dropped, bytes_moved=moved)
