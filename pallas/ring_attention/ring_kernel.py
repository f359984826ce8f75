"""Ring attention forward as one Pallas TPU kernel per device, kv moved by remote DMA.

Runs inside `jax.shard_map` over the ring axis (n devices). Each device keeps its queries and
walks the ring in n steps; at step s it holds the kv block that started on device me - s.

Buffers (HBM, outputs of the kernel so they live for its whole run):
  kbuf/vbuf [2,B,K,Sl,Dh] and sbuf/pbuf/ibuf [2,B,1,Sl] (segment ids, positions, item ids):
  two slots. The five tensors travel together, so a kv block always arrives with the mask
  data of its tokens (kernel.py's rule, bidirectional media items included).
  acc [B,H,Sl,Dh], m/l [B,H,Sl,1] f32: the online-softmax state of every query row.

Step s (grid axis 0; the grid is (n, B, H, nq, nk), all sequential):
  first grid point of the step:
    s == 0: barrier with both neighbours (they are inside the kernel and their buffers are
            live), then copy the local kv into slot 0;
    s > 0:  wait for the kv the left neighbour sent into slot s%2 (recv semaphore of step s-1);
    s < n-1: wait until the right neighbour has released its slot (s+1)%2 (a REGULAR
            semaphore it signals after finishing step s-1), then start the remote copies of
            slot s%2 into the right neighbour's slot (s+1)%2.
  every grid point: flash step of q block (b,h,qi) against kv block ki of slot s%2 (kv head
    h // (H/K)), state read from / written back to HBM at the first / last kv block. The
    remote copy runs meanwhile: communication hides behind the n-1 compute steps.
  last grid point: wait for the outgoing copies, then tell the left neighbour that slot s%2
    is free (only for the steps whose release somebody waits for, so every semaphore ends
    at zero).
Every DMA semaphore is indexed by (tensor, step): no semaphore is reused across steps, so a
late copy can never be mistaken for the current one. Block skipping uses the block
summaries of every device's kv (all-gathered, tiny; six int32 per block including the
item-id range, see kernel.block_summary) indexed by the kv block's origin.

The caller finishes with `finalize` (o = acc / l, lse = m + log l).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas.ring_attention import kernel
from pallas.ring_attention.kernel import Tokens
from pallas.ring_attention.reference import NEG_INF

_F32 = jnp.float32
_N_TENSORS = 5  # k, v, segment ids, positions, item ids travel together.


def _ring_kernel(qs, ks, me_ref, q_ref, qseg_ref, qpos_ref, qbid_ref, k_hbm, v_hbm, kseg_hbm,
                 kpos_hbm, kbid_hbm, acc_hbm, m_hbm, l_hbm, kbuf, vbuf, sbuf, pbuf, ibuf,
                 m_sc, l_sc, acc_sc, k_blk, v_blk, s_blk, p_blk, i_blk,
                 local_sem, state_sem, send_sem, recv_sem, free_sem,
                 *, axis_name, n, nb, nh, nq, nk, g, bq, bk, causal, sm_scale):
  s, b, h, qi, ki = (pl.program_id(i) for i in range(5))
  me = me_ref[0]
  right = lax.rem(me + 1, n)
  left = lax.rem(me + n - 1, n)
  slot = lax.rem(s, 2)
  first = (b == 0) & (h == 0) & (qi == 0) & (ki == 0)
  last = (b == nb - 1) & (h == nh - 1) & (qi == nq - 1) & (ki == nk - 1)
  bufs = (kbuf, vbuf, sbuf, pbuf, ibuf)

  def remote(j, step):
    """The copy of tensor j sent at `step`: my slot step%2 -> right's slot (step+1)%2."""
    return pltpu.make_async_remote_copy(
        bufs[j].at[lax.rem(step, 2)], bufs[j].at[lax.rem(step + 1, 2)],
        send_sem.at[j, step], recv_sem.at[j, step],
        device_id={axis_name: right}, device_id_type=pl.DeviceIdType.MESH)

  @pl.when(first & (s == 0))
  def _start():
    if n > 1:
      barrier = pltpu.get_barrier_semaphore()
      for nbr in (left, right):
        pl.semaphore_signal(barrier, 1, device_id={axis_name: nbr},
                            device_id_type=pl.DeviceIdType.MESH)
      pl.semaphore_wait(barrier, 2)
    copies = [pltpu.make_async_copy(src, dst.at[0], local_sem.at[j]) for j, (src, dst) in
              enumerate(zip((k_hbm, v_hbm, kseg_hbm, kpos_hbm, kbid_hbm), bufs))]
    for c in copies:
      c.start()
    for c in copies:
      c.wait()

  if n > 1:
    @pl.when(first & (s > 0))
    def _receive():
      for j in range(_N_TENSORS):
        remote(j, s - 1).wait_recv()

    @pl.when(first & (s < n - 1))
    def _send():
      @pl.when(s >= 1)
      def _wait_free():
        pl.semaphore_wait(free_sem.at[s - 1], 1)

      for j in range(_N_TENSORS):
        remote(j, s).start()

  # ---- compute: q block (b, h, qi) against kv block ki of the current slot.
  rows = pl.ds(pl.multiple_of(qi * bq, bq), bq)
  state = [(acc_hbm, acc_sc), (m_hbm, m_sc), (l_hbm, l_sc)]

  @pl.when((ki == 0) & (s == 0))
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG_INF, _F32)
    l_sc[...] = jnp.zeros(l_sc.shape, _F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)

  @pl.when((ki == 0) & (s > 0))
  def _load_state():
    copies = [pltpu.make_async_copy(hbm.at[b, h, rows], sc, state_sem.at[j])
              for j, (hbm, sc) in enumerate(state)]
    for c in copies:
      c.start()
    for c in copies:
      c.wait()

  src_dev = lax.rem(me + n - s, n)   # Where the kv block in this slot started.
  needed = kernel.block_needed(qs, ks, b * nq + qi, (src_dev * nb + b) * nk + ki, causal)

  @pl.when(needed)
  def _compute():
    cols = pl.ds(pl.multiple_of(ki * bk, bk), bk)
    kvh = h // g
    copies = [
        pltpu.make_async_copy(kbuf.at[slot, b, kvh, cols], k_blk, local_sem.at[0]),
        pltpu.make_async_copy(vbuf.at[slot, b, kvh, cols], v_blk, local_sem.at[1]),
        pltpu.make_async_copy(sbuf.at[slot, b, :, cols], s_blk, local_sem.at[2]),
        pltpu.make_async_copy(pbuf.at[slot, b, :, cols], p_blk, local_sem.at[3]),
        pltpu.make_async_copy(ibuf.at[slot, b, :, cols], i_blk, local_sem.at[4]),
    ]
    for c in copies:
      c.start()
    for c in copies:
      c.wait()
    kernel.online_softmax_step(q_ref[...], k_blk[...], v_blk[...],
                               (qseg_ref[...], qpos_ref[...], qbid_ref[...]),
                               (s_blk[...], p_blk[...], i_blk[...]), m_sc, l_sc, acc_sc,
                               causal=causal, sm_scale=sm_scale)

  @pl.when(ki == nk - 1)
  def _store_state():
    copies = [pltpu.make_async_copy(sc, hbm.at[b, h, rows], state_sem.at[j])
              for j, (hbm, sc) in enumerate(state)]
    for c in copies:
      c.start()
    for c in copies:
      c.wait()

  if n > 1:
    @pl.when(last & (s < n - 1))
    def _sent():
      for j in range(_N_TENSORS):
        remote(j, s).wait_send()

    @pl.when(last & (s <= n - 3))
    def _release():
      pl.semaphore_signal(free_sem.at[s], 1, device_id={axis_name: left},
                          device_id_type=pl.DeviceIdType.MESH)


def ring_flash_fwd(q, k, v, tok: Tokens, *, axis_name: str, n: int, causal: bool,
                   sm_scale: float, block_q: int, block_k: int, interpret):
  """Per-device ring forward (call inside shard_map over `axis_name` of size n).

  q [B,H,Sl,Dh], k/v [B,K,Sl,Dh], tok.seg/pos/bid int32 [B,Sl] (this device's tokens,
  positions global). interpret: False (compile for TPU), True (TPU interpret mode with default
  parameters) or a `pltpu.InterpretParams`. Returns (out f32 [B,H,Sl,Dh], lse f32 [B,H,Sl,1]).
  """
  b, h, sl, d = q.shape
  kh = k.shape[1]
  g = h // kh
  nq, nk = sl // block_q, sl // block_k
  if interpret is True:
    interpret = pltpu.InterpretParams()
  q_sum = kernel.block_summary(tok, block_q)
  k_sum = kernel.block_summary(tok, block_k)
  if n > 1:
    k_sum = lax.all_gather(k_sum, axis_name, tiled=True)   # [n * B * nk * 6], tiny.
  me = lax.axis_index(axis_name).astype(jnp.int32).reshape(1)

  grid = (n, b, h, nq, nk)
  qspec = pl.BlockSpec((None, None, block_q, d), lambda s, b_, h_, i, j, *_: (b_, h_, i, 0))
  qtok = pl.BlockSpec((None, block_q, 1), lambda s, b_, h_, i, j, *_: (b_, i, 0))
  hbm = pl.BlockSpec(memory_space=pl.ANY)
  out_shape = [
      jax.ShapeDtypeStruct((b, h, sl, d), _F32),             # acc
      jax.ShapeDtypeStruct((b, h, sl, 1), _F32),             # m
      jax.ShapeDtypeStruct((b, h, sl, 1), _F32),             # l
      jax.ShapeDtypeStruct((2, b, kh, sl, d), k.dtype),      # kbuf
      jax.ShapeDtypeStruct((2, b, kh, sl, d), v.dtype),      # vbuf
      jax.ShapeDtypeStruct((2, b, 1, sl), jnp.int32),        # sbuf
      jax.ShapeDtypeStruct((2, b, 1, sl), jnp.int32),        # pbuf
      jax.ShapeDtypeStruct((2, b, 1, sl), jnp.int32),        # ibuf
  ]
  scratch = [
      pltpu.VMEM((block_q, 1), _F32), pltpu.VMEM((block_q, 1), _F32),
      pltpu.VMEM((block_q, d), _F32),
      pltpu.VMEM((block_k, d), k.dtype), pltpu.VMEM((block_k, d), v.dtype),
      pltpu.VMEM((1, block_k), jnp.int32), pltpu.VMEM((1, block_k), jnp.int32),
      pltpu.VMEM((1, block_k), jnp.int32),
      pltpu.SemaphoreType.DMA((_N_TENSORS,)),           # local copies
      pltpu.SemaphoreType.DMA((3,)),                    # state load/store
      pltpu.SemaphoreType.DMA((_N_TENSORS, n)),         # send, per tensor and step
      pltpu.SemaphoreType.DMA((_N_TENSORS, n)),         # recv, per tensor and step
      pltpu.SemaphoreType.REGULAR((n,)),                # slot released, per step
  ]
  body = functools.partial(_ring_kernel, axis_name=axis_name, n=n, nb=b, nh=h, nq=nq, nk=nk,
                           g=g, bq=block_q, bk=block_k, causal=causal, sm_scale=sm_scale)
  acc, m, l, *_ = pl.pallas_call(
      body,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=grid,
          in_specs=[qspec, qtok, qtok, qtok, hbm, hbm, hbm, hbm, hbm],
          out_specs=[hbm] * len(out_shape), scratch_shapes=scratch),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          collective_id=0, has_side_effects=True,
          dimension_semantics=("arbitrary",) * len(grid)),
      interpret=interpret, name="ring_flash_fwd",
  )(q_sum, k_sum, me, q, *(x[:, :, None] for x in tok), k, v, *(x[:, None, :] for x in tok))
  out, lse = kernel.finalize(m, l, acc)
  return out, lse
