"""Token exchange between expert-parallel devices (call inside `jax.shard_map`).

Three ways to move rows sorted by expert to the devices that own the experts:

1. `ragged_exchange`: a Pallas TPU kernel doing remote DMA of variable-length slices.
   Counts are exchanged first (a tiny all_gather of [E] int32 over the expert axis), so
   every device knows every slice's source offset, size and destination offset. DMA
   shapes must be static on TPU, so a slice of `size` rows is moved as the binary
   decomposition of `size`: one DMA of 2^b rows for each set bit b. Each slot
   (peer, local expert) has its own send and receive DMA semaphore; the bit-chunks of one
   slot share it (DMA semaphores count bytes and every chunk is waited for with its own
   size, so the counts balance). One semaphore per (slot, bit) would not fit: the TPU has
   2 KiB of scoped semaphore memory (Pro: 64 experts x 13 bits x 2 = 1664 > 512).
2. `lax.ragged_all_to_all` (`xla_ragged_dispatch` / `xla_ragged_combine`): the XLA
   collective, the reference on platforms that have it (TPU/GPU; not XLA:CPU).
3. Fixed capacity: `lax.all_to_all` of an [E, C, D] buffer (see ops.py).

Receive-buffer layout on expert owner p (El = E/P local experts): rows grouped by local
expert, and inside an expert by source device:  R[p, el, s] = sum_{el'<el, s'} c[s', p*El+el']
+ sum_{s'<s} c[s', p*El+el]  where c[s, e] = rows device s sends to expert e. The buffer
bound is P * N_local rows (N_local = T_local * k): the exact worst case (every token of
the expert group routed to this device's experts), so dispatch is truly dropless.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


# ---------------------------------------------------------------------------------------
# Exchange plans (plain JAX, identical on every device of the expert group).


def _excl_cumsum(x, axis=-1):
  return jnp.cumsum(x, axis=axis) - x


def receive_offsets(counts_all: jax.Array, num_local: int) -> jax.Array:
  """int32 [P, El, P_src]: R[p, el, s] = row in p's receive buffer of slice (s -> expert p*El+el)."""
  p = counts_all.shape[0]
  c = counts_all.reshape(p, p, num_local)                     # [src, dst, el]
  c = jnp.transpose(c, (1, 2, 0)).reshape(p, num_local * p)   # [dst, (el, src)]
  return _excl_cumsum(c, axis=1).reshape(p, num_local, p)


def dispatch_plan(counts_all: jax.Array, me: jax.Array, num_local: int):
  """Plan for sending this device's expert-sorted rows to the expert owners.

  counts_all: int32 [P, E], counts_all[s, e] = rows device s has for expert e.
  Returns dict of int32 [P, El] arrays (slot [q, el] = expert q*El+el):
    src: start row in local sorted rows; size: rows; dst: start row on peer q;
    recv: rows this device receives from peer q for its local expert el.
  """
  p = counts_all.shape[0]
  mine = counts_all[me]                                       # [E]
  r = receive_offsets(counts_all, num_local)                  # [P, El, P_src]
  return dict(
      src=_excl_cumsum(mine).reshape(p, num_local),
      size=mine.reshape(p, num_local),
      dst=r[:, :, me],
      recv=counts_all[:, me * num_local + jnp.arange(num_local)],
  )


def combine_plan(counts_all: jax.Array, me: jax.Array, num_local: int):
  """The reverse of `dispatch_plan`: expert outputs go back to the token owners."""
  p = counts_all.shape[0]
  r = receive_offsets(counts_all, num_local)[me]              # [El, P_src]
  expert = me * num_local + jnp.arange(num_local)
  src_off_all = _excl_cumsum(counts_all, axis=1)              # [P_src, E]
  return dict(
      src=r.T,                                                # [q, el]
      size=counts_all[:, expert],                             # [q, el]: rows of q for my expert el
      dst=src_off_all[:, expert],
      recv=counts_all[me].reshape(p, num_local),
  )


def local_group_sizes(counts_all: jax.Array, me: jax.Array, num_local: int) -> jax.Array:
  """int32 [El]: rows received for each local expert (sum over sources)."""
  return jnp.sum(counts_all[:, me * num_local + jnp.arange(num_local)], axis=0)


# ---------------------------------------------------------------------------------------
# The Pallas remote-DMA kernel.


# TPU scoped semaphore memory is 2 KiB (512 x int32, measured with the v5e compiler);
# leave room for the barrier semaphore and anything Mosaic adds.
MAX_SEMAPHORES = 448


def _num_bits(max_rows: int) -> int:
  return max(1, int(max_rows).bit_length())


def _exchange_kernel(src_ref, size_ref, dst_ref, recv_ref, x_ref, out_ref, send_sem, recv_sem, *,
                     axis_name: str, mesh_axes: Sequence[str], num_peers: int, num_local: int,
                     nbits: int):
  me = lax.axis_index(axis_name)
  coords = [lax.axis_index(a) for a in mesh_axes]
  which = list(mesh_axes).index(axis_name)

  def peer(q):
    c = list(coords)
    c[which] = q
    return tuple(c)

  # Barrier: every peer must be inside the kernel (its receive buffer live) before we write.
  barrier = pltpu.get_barrier_semaphore()
  for q in range(num_peers):
    pl.semaphore_signal(barrier, 1, device_id=peer(q), device_id_type=pl.DeviceIdType.MESH)
  pl.semaphore_wait(barrier, num_peers)

  def chunks(size_of, body):
    # Binary decomposition of a ragged length into static-size copies.
    for b in range(nbits):
      rows = 1 << b
      lead = (size_of >> (b + 1)) << (b + 1)  # rows covered by higher bits

      @pl.when((size_of >> b) & 1 == 1)
      def _():
        body(b, rows, lead)

  def descriptor(q, el, b, rows, src_start, dst_start):
    return pltpu.make_async_remote_copy(
        src_ref=x_ref.at[pl.ds(src_start, rows)],
        dst_ref=out_ref.at[pl.ds(dst_start, rows)],
        send_sem=send_sem.at[q, el],
        recv_sem=recv_sem.at[me, el],
        device_id=peer(q), device_id_type=pl.DeviceIdType.MESH)

  def start_all(i, carry):
    q, el = i // num_local, i % num_local
    src, dst = src_ref[i], dst_ref[i]
    chunks(size_ref[i], lambda b, rows, lead: descriptor(q, el, b, rows, src + lead, dst + lead).start())
    return carry

  lax.fori_loop(0, num_peers * num_local, start_all, 0)

  def wait_all(i, carry):
    q, el = i // num_local, i % num_local
    # Sends: our reads of x are done.
    chunks(size_ref[i], lambda b, rows, lead: pltpu.make_async_remote_copy(
        src_ref=x_ref.at[pl.ds(0, rows)], dst_ref=out_ref.at[pl.ds(0, rows)],
        send_sem=send_sem.at[q, el], recv_sem=recv_sem.at[me, el],
        device_id=peer(q), device_id_type=pl.DeviceIdType.MESH).wait_send())
    # Receives: slice from peer q for slot el has landed (semaphore slot [q, el]).
    chunks(recv_ref[i], lambda b, rows, lead: pltpu.make_async_remote_copy(
        src_ref=x_ref.at[pl.ds(0, rows)], dst_ref=out_ref.at[pl.ds(0, rows)],
        send_sem=send_sem.at[q, el], recv_sem=recv_sem.at[q, el],
        device_id=peer(q), device_id_type=pl.DeviceIdType.MESH).wait_recv())
    return carry

  lax.fori_loop(0, num_peers * num_local, wait_all, 0)


def ragged_exchange(x: jax.Array, plan, *, out_rows: int, axis_name: str,
                    mesh_axes: Sequence[str], interpret=False) -> jax.Array:
  """Remote-DMA ragged exchange. Call inside shard_map over `mesh_axes`.

  Args:
    x: [N, D] local rows.
    plan: dict of int32 [P, El] `src`, `size`, `dst`, `recv` (see dispatch_plan).
    out_rows: static receive-buffer rows; every dst + size must be <= out_rows.
    interpret: False (Mosaic) or pltpu.InterpretParams(...) for CPU testing.
  Returns:
    [out_rows, D]: the received rows; rows no slice wrote are UNDEFINED (caller masks).
  """
  n, d = x.shape
  p, el = plan["size"].shape
  nbits = _num_bits(min(n, out_rows))
  flat = [plan[k].reshape(-1).astype(jnp.int32) for k in ("src", "size", "dst", "recv")]
  kernel = functools.partial(_exchange_kernel, axis_name=axis_name, mesh_axes=tuple(mesh_axes),
                             num_peers=p, num_local=el, nbits=nbits)
  if 2 * p * el > MAX_SEMAPHORES:
    raise ValueError(f"ragged_exchange: {p} peers x {el} local experts need {2 * p * el} DMA "
                     f"semaphores; the TPU scoped semaphore budget allows {MAX_SEMAPHORES}")
  sems = pltpu.SemaphoreType.DMA((p, el))
  # Rows travel as [rows, 1, D]: the leading dim is untiled on TPU, so a DMA may start at
  # any row (a 2-D [rows, D] HBM ref needs row offsets aligned to the (8,128) tile).
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((out_rows, 1, d), x.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
          out_specs=pl.BlockSpec(memory_space=pl.ANY),
          scratch_shapes=[sems, sems],
      ),
      compiler_params=pltpu.CompilerParams(collective_id=0, has_side_effects=True),
      interpret=interpret,
      name="moe_ragged_exchange",
  )(*flat, x.reshape(n, 1, d))
  return out.reshape(out_rows, d)


# ---------------------------------------------------------------------------------------
# lax.ragged_all_to_all reference path (per-peer slices; TPU/GPU only).


def xla_ragged_dispatch(x, counts_all, me, *, out_rows: int, axis_name: str):
  """Dispatch with lax.ragged_all_to_all. x [N,D] sorted by expert; returns [out_rows, D]
  in the same layout as `ragged_exchange` with `dispatch_plan` (grouped by local expert,
  then source), rows past the total are zero."""
  p, e = counts_all.shape
  el = e // p
  mine = counts_all[me].reshape(p, el)
  send_sizes = jnp.sum(mine, axis=1)
  input_offsets = _excl_cumsum(send_sizes)
  per_src = counts_all[:, me * el + jnp.arange(el)]              # [src, el] rows I get
  recv_sizes = jnp.sum(per_src, axis=1)
  # Source-major landing zone, then a local regroup to expert-major order.
  landing = _excl_cumsum(recv_sizes)                             # [src] on me
  all_per_dst = jnp.sum(counts_all.reshape(p, p, el), axis=2)    # [src, dst]
  output_offsets = _excl_cumsum(all_per_dst, axis=0)[me]         # where my slice lands on each dst
  buf = lax.ragged_all_to_all(x, jnp.zeros((out_rows, x.shape[1]), x.dtype),
                              input_offsets, send_sizes, output_offsets, recv_sizes,
                              axis_name=axis_name)
  return buf[_source_major_index(per_src, landing, out_rows)] * _valid(per_src, out_rows, x.dtype)


def _source_major_index(per_src, landing, out_rows):
  """For each expert-major row, its row in the source-major landing buffer."""
  p, el = per_src.shape
  within_src = _excl_cumsum(per_src, axis=1)                      # [src, el]
  exp_major = _excl_cumsum(per_src.T.reshape(-1)).reshape(el, p)  # [el, src] start rows
  rows = jnp.arange(out_rows)
  seg_starts = exp_major.reshape(-1)
  seg = jnp.clip(jnp.searchsorted(seg_starts, rows, side="right") - 1, 0, p * el - 1)
  # Skip empty segments that share a start: searchsorted(right) picks the last of them,
  # which is the non-empty one when a row falls inside it.
  e_idx, s_idx = seg // p, seg % p
  return landing[s_idx] + within_src[s_idx, e_idx] + rows - seg_starts[seg]


def _valid(per_src, out_rows, dtype):
  return (jnp.arange(out_rows) < jnp.sum(per_src))[:, None].astype(dtype)


def xla_ragged_combine(y, counts_all, me, *, out_rows: int, axis_name: str):
  """Inverse of `xla_ragged_dispatch`: y [R, D] expert-major rows back to token owners."""
  p, e = counts_all.shape
  el = e // p
  per_src = counts_all[:, me * el + jnp.arange(el)]
  recv_sizes_back = jnp.sum(per_src, axis=1)                     # rows I return to each src
  landing = _excl_cumsum(recv_sizes_back)
  idx = _source_major_index(per_src, landing, y.shape[0])
  idx = jnp.where(jnp.arange(y.shape[0]) < jnp.sum(per_src), idx, y.shape[0])  # drop padding rows
  src_major = jnp.zeros_like(y).at[idx].set(y, mode="drop")
  recv_sizes = jnp.sum(counts_all[me].reshape(p, el), axis=1)    # rows coming back from each owner
  all_per_dst = jnp.sum(counts_all.reshape(p, p, el), axis=2)    # [src, dst]
  # On the way back the owner me sends slice for source q to q at q's offset of owner me.
  back_offsets = _excl_cumsum(all_per_dst, axis=1)[:, me]         # [q]
  return lax.ragged_all_to_all(src_major, jnp.zeros((out_rows, y.shape[1]), y.dtype),
                               landing, recv_sizes_back, back_offsets, recv_sizes,
                               axis_name=axis_name)
