"""Grouped matmul Pallas TPU kernels: `gmm` (forward) and `tgmm` (weight gradient).

Rows of `lhs` are sorted by group (expert); group g owns rows [off[g], off[g+1]).
The m axis is cut into tiles of `tm` rows; a tile that straddles a group boundary is
visited once per group it touches ("visits"), so the grid's visit axis has the static
bound  tiles_m + num_groups (+1 for the tail pseudo-group in gmm). Visit metadata
(group id, m-tile id, number of real visits) is computed in plain JAX and handed to
the kernel as scalar-prefetch operands that drive the BlockSpec index maps.

Padding visits (index >= real count) repeat the last real visit's block indices, so
they trigger no new DMA, and skip compute.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

Tiling = Tuple[int, int, int]
DEFAULT_TILING: Tiling = (128, 128, 128)


def _round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def _fit_tile(tile: int, dim: int, align: int) -> int:
  """Largest useful tile: `tile`, shrunk to the (aligned) dim when the dim is smaller."""
  return min(tile, _round_up(dim, align))


def make_visits(group_sizes: jax.Array, m_pad: int, tm: int, with_tail: bool):
  """Visit schedule over (group, m-tile) pairs.

  Args:
    group_sizes: int32 [e]; sum may be < m_pad (tail rows are not in any group).
    m_pad: padded row count (multiple of tm).
    with_tail: add pseudo-group `e` covering rows [sum, m_pad) (gmm must zero them).
  Returns:
    offsets int32 [e+2] (group g rows = [offsets[g], offsets[g+1]); offsets[e+1]=m_pad),
    group_ids int32 [V], m_tile_ids int32 [V], num_visits int32 [1];
    V = tiles_m + e + 1 static. Every group, even empty, gets >= 1 visit so tgmm
    writes its (zero) output block.
  """
  e = group_sizes.shape[0]
  tiles_m = m_pad // tm
  sizes = group_sizes.astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  starts = ends - sizes
  offsets = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends,
                             jnp.full((1,), m_pad, jnp.int32)])
  if with_tail:
    sizes = jnp.concatenate([sizes, jnp.full((1,), m_pad, jnp.int32) - ends[-1:]])
    starts = jnp.concatenate([starts, ends[-1:]])
    ends = jnp.concatenate([ends, jnp.full((1,), m_pad, jnp.int32)])
  ng = sizes.shape[0]
  first_tile = jnp.minimum(starts // tm, tiles_m - 1)
  last_tile = jnp.maximum((ends + tm - 1) // tm, first_tile + 1)  # exclusive
  if with_tail:
    # An empty tail needs no visit; real empty groups keep one (zero write in tgmm).
    is_tail = jnp.arange(ng) == e
    count = jnp.where(is_tail & (sizes == 0), 0, last_tile - first_tile)
  else:
    count = last_tile - first_tile
  vmax = tiles_m + e + 1
  cum = jnp.cumsum(count)
  num = cum[-1]
  v = jnp.arange(vmax, dtype=jnp.int32)
  vc = jnp.minimum(v, num - 1)  # padding visits repeat the last real one
  gid = jnp.searchsorted(cum, vc, side="right").astype(jnp.int32)
  tile = first_tile[gid] + vc - (cum[gid] - count[gid])
  return offsets, gid, tile.astype(jnp.int32), num.reshape(1).astype(jnp.int32)


def _gmm_kernel(off_ref, gid_ref, tile_ref, num_ref, lhs_ref, rhs_ref, out_ref, acc_ref, *,
                tm: int, num_groups: int, transpose_rhs: bool):
  v = pl.program_id(1)
  kk = pl.program_id(2)
  nk = pl.num_programs(2)
  valid = v < num_ref[0]

  @pl.when(kk == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(valid)
  def _():
    rhs = rhs_ref[...]
    dims = (((1,), (1,)), ((), ())) if transpose_rhs else (((1,), (0,)), ((), ()))
    acc_ref[...] += jax.lax.dot_general(lhs_ref[...], rhs, dims,
                                        preferred_element_type=jnp.float32)

  @pl.when(valid & (kk == nk - 1))
  def _():
    g = gid_ref[v]
    first_visit_of_tile = (v == 0) | (tile_ref[jnp.maximum(v - 1, 0)] != tile_ref[v])
    row = tile_ref[v] * tm + jax.lax.broadcasted_iota(jnp.int32, acc_ref.shape, 0)
    in_group = (row >= off_ref[g]) & (row < off_ref[g + 1]) & (g < num_groups)
    prev = jnp.where(first_visit_of_tile, jnp.zeros(acc_ref.shape, jnp.float32), out_ref[...].astype(jnp.float32))
    out_ref[...] = jnp.where(in_group, acc_ref[...], prev).astype(out_ref.dtype)


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *,
        tiling: Optional[Tiling] = None, transpose_rhs: bool = False,
        preferred_dtype=None, interpret=False) -> jax.Array:
  """Grouped matmul.

  Args:
    lhs: [m, k] rows sorted by group.
    rhs: [e, k, n] (or [e, n, k] with transpose_rhs=True).
    group_sizes: int32 [e], sum <= m. Rows past the sum give zero output rows.
    tiling: (tm, tk, tn); shrunk to the operand sizes; dims are zero-padded to tiles.
    interpret: False, True or a pltpu.InterpretParams.
  Returns:
    [m, n] in `preferred_dtype` (default lhs.dtype); row r of group g = lhs[r] @ rhs[g].
  """
  m, k = lhs.shape
  e = rhs.shape[0]
  n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
  if (rhs.shape[2] if transpose_rhs else rhs.shape[1]) != k:
    raise ValueError(f"gmm: lhs {lhs.shape} and rhs {rhs.shape} disagree on k "
                     f"(transpose_rhs={transpose_rhs})")
  if group_sizes.shape != (e,):
    raise ValueError(f"gmm: group_sizes shape {group_sizes.shape} != ({e},)")
  out_dtype = preferred_dtype or lhs.dtype
  tm, tk, tn = tiling or DEFAULT_TILING
  tm, tk, tn = _fit_tile(tm, m, 8), _fit_tile(tk, k, 128), _fit_tile(tn, n, 128)
  mp, kp, np_ = _round_up(m, tm), _round_up(k, tk), _round_up(n, tn)
  lhs_p = jnp.pad(lhs, ((0, mp - m), (0, kp - k)))
  if transpose_rhs:
    rhs_p = jnp.pad(rhs, ((0, 0), (0, np_ - n), (0, kp - k)))
    rhs_spec = pl.BlockSpec((None, tn, tk), lambda j, v, kk, off, gid, tile, num:
                            (jnp.minimum(gid[v], e - 1), j, kk))
  else:
    rhs_p = jnp.pad(rhs, ((0, 0), (0, kp - k), (0, np_ - n)))
    rhs_spec = pl.BlockSpec((None, tk, tn), lambda j, v, kk, off, gid, tile, num:
                            (jnp.minimum(gid[v], e - 1), kk, j))
  off, gid, tile, num = make_visits(group_sizes, mp, tm, with_tail=True)
  vmax = gid.shape[0]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=4,
      grid=(np_ // tn, vmax, kp // tk),
      in_specs=[
          pl.BlockSpec((tm, tk), lambda j, v, kk, off, gid, tile, num: (tile[v], kk)),
          rhs_spec,
      ],
      out_specs=pl.BlockSpec((tm, tn), lambda j, v, kk, off, gid, tile, num: (tile[v], j)),
      scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
  )
  kernel = functools.partial(_gmm_kernel, tm=tm, num_groups=e, transpose_rhs=transpose_rhs)
  flops = 2 * m * k * n
  out = pl.pallas_call(
      kernel,
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "arbitrary", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=flops, transcendentals=0,
          bytes_accessed=(lhs.size * lhs.dtype.itemsize + rhs.size * rhs.dtype.itemsize
                          + m * n * jnp.dtype(out_dtype).itemsize)),
      interpret=interpret,
      name="gmm",
  )(off, gid, tile, num, lhs_p, rhs_p)
  return out[:m, :n]


def _tgmm_kernel(off_ref, gid_ref, tile_ref, num_ref, lhs_ref, rhs_ref, out_ref, acc_ref, *,
                 tm: int):
  v = pl.program_id(2)
  num = num_ref[0]
  valid = v < num
  g = gid_ref[v]
  first = (v == 0) | (gid_ref[jnp.maximum(v - 1, 0)] != g)
  last = (v == num - 1) | (gid_ref[jnp.minimum(v + 1, num - 1)] != g)

  @pl.when(valid & first)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(valid)
  def _():
    row = tile_ref[v] * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, 1), 0)
    in_group = (row >= off_ref[g]) & (row < off_ref[g + 1])
    # Mask both operands: rows outside the group may hold anything (even NaN).
    lhs = jnp.where(in_group, lhs_ref[...], jnp.zeros(lhs_ref.shape, lhs_ref.dtype))
    rhs = jnp.where(in_group, rhs_ref[...], jnp.zeros(rhs_ref.shape, rhs_ref.dtype))
    acc_ref[...] += jax.lax.dot_general(lhs, rhs, (((0,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)

  @pl.when(valid & last)
  def _():
    out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def tgmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *,
         tiling: Optional[Tiling] = None, preferred_dtype=None, interpret=False) -> jax.Array:
  """Transposed grouped matmul: out[g] = lhs[rows_g]^T @ rhs[rows_g].

  Args:
    lhs: [m, k], rhs: [m, n], rows sorted by group; group_sizes int32 [e], sum <= m.
  Returns:
    [e, k, n] in `preferred_dtype` (default lhs.dtype); empty groups give zeros.
  """
  m, k = lhs.shape
  if rhs.shape[0] != m:
    raise ValueError(f"tgmm: lhs {lhs.shape} and rhs {rhs.shape} disagree on m")
  n = rhs.shape[1]
  e = group_sizes.shape[0]
  out_dtype = preferred_dtype or lhs.dtype
  tm, tk, tn = tiling or DEFAULT_TILING
  tm, tk, tn = _fit_tile(tm, m, 8), _fit_tile(tk, k, 128), _fit_tile(tn, n, 128)
  mp, kp, np_ = _round_up(m, tm), _round_up(k, tk), _round_up(n, tn)
  lhs_p = jnp.pad(lhs, ((0, mp - m), (0, kp - k)))
  rhs_p = jnp.pad(rhs, ((0, mp - m), (0, np_ - n)))
  off, gid, tile, num = make_visits(group_sizes, mp, tm, with_tail=False)
  vmax = gid.shape[0]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=4,
      grid=(kp // tk, np_ // tn, vmax),
      in_specs=[
          pl.BlockSpec((tm, tk), lambda i, j, v, off, gid, tile, num: (tile[v], i)),
          pl.BlockSpec((tm, tn), lambda i, j, v, off, gid, tile, num: (tile[v], j)),
      ],
      out_specs=pl.BlockSpec((None, tk, tn), lambda i, j, v, off, gid, tile, num: (gid[v], i, j)),
      scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)],
  )
  out = pl.pallas_call(
      functools.partial(_tgmm_kernel, tm=tm),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((e, kp, np_), out_dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=2 * m * k * n, transcendentals=0,
          bytes_accessed=(lhs.size * lhs.dtype.itemsize + rhs.size * rhs.dtype.itemsize
                          + e * k * n * jnp.dtype(out_dtype).itemsize)),
      interpret=interpret,
      name="tgmm",
  )(off, gid, tile, num, lhs_p, rhs_p)
  return out[:, :k, :n]
