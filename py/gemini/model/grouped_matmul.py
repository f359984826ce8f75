"""Grouped matmul as one batched dense dot over fixed-size row tiles (no grouped-matmul kernel).

`lax.ragged_dot` lowers on XLA:CPU to a slow generic loop (27-100x slower than a dense dot of
the same FLOPs, measured); this module runs the same product at dense-dot speed:

    rows a = 0..A-1, each with a group id ids[a] (an expert) or ids[a] >= G (no group)
      plan: sort rows by group; each group's rows fill ceil(n_g / tile) tiles of `tile` slots,
            the last one zero-padded; tiles are laid out group after group
            slots [S = nt * tile], nt = floor((A + G (tile - 1)) / tile) (static bound: every
            group wastes < 1 tile), unused tiles at the end are all padding
      take_rows   x [A, K]                    -> x_tiles [nt, tile, K]   (padding rows = 0)
      tiled_dot   x_tiles, w [G, K, N]        -> [nt, tile, N]: tile t times w[tile_group[t]]
                                                 (one batched dot over tiles)
      take_rows   y [S, N]                    -> [A, N] back in row order

Gradients are written out (custom VJPs) so nothing runs as an XLA scatter (a serial loop on
CPU): `take_rows` is transposed by a gather through the inverse map, and `tiled_dot`'s weight
gradient is accumulated per group over that group's tiles (a loop over tiles adding
tile^T @ dy into dW[group]) instead of materialising one weight-sized gradient per tile.

`grouped_matmul(lhs, rhs, group_sizes)` is the `lax.ragged_dot` contract on top of this (rows
sorted by group; rows past sum(group_sizes) give zeros). The MoE layer (`gemini.model.moe`,
impl="tiled") keeps the whole expert FFN in tile layout instead: gather tokens once, three
tiled dots, gather the outputs once.

bf16 rows and weight tiles are gathered as their uint16 bits (XLA:CPU runs a bf16 gather in
f32 with a conversion pass each side); `tiled_dot` takes the f32 weight and casts it inside, so
under the layer scan the backward pass recomputes the cast and the tiles from the scanned f32
slice instead of stacking a bf16 copy per layer.

Compute cost: S <= A + G (tile - 1) rows instead of A; `choose_tile` trades padding against
the size of each tile's dot.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


class TilePlan(NamedTuple):
  """Where every row goes. S = nt * tile slots; A rows.

  slot_of_row:  int32 [A]  the slot holding row a, or S if the row is in no group
  row_of_slot:  int32 [S]  the row in slot s, or A for a padding slot
  tile_group:   int32 [nt] the group whose weights tile t uses (unused tiles: any valid id)
  """
  slot_of_row: jax.Array
  row_of_slot: jax.Array
  tile_group: jax.Array

  @property
  def num_tiles(self) -> int:
    return self.tile_group.shape[0]

  @property
  def tile(self) -> int:
    return self.row_of_slot.shape[0] // self.tile_group.shape[0]


def num_tiles(num_rows: int, num_groups: int, tile: int) -> int:
  """Static bound on the tiles any assignment of `num_rows` rows to `num_groups` needs."""
  return max(1, (num_rows + num_groups * (tile - 1)) // tile)


def choose_tile(num_rows: int, num_groups: int, max_tile: int = 128, min_tile: int = 8) -> int:
  """The largest power of two <= half the mean group size, in [min_tile, max_tile]: padding
  (< 1 tile per group, ~half a tile on average) stays near 25 % of the rows on balanced
  routing while each tile's dot keeps enough rows to run at dense speed."""
  mean = max(1, num_rows // max(1, num_groups))
  tile = min_tile
  while tile * 4 <= mean and tile < max_tile:
    tile *= 2
  return tile


def plan(ids: jax.Array, num_groups: int, tile: int) -> TilePlan:
  """ids int [A] (group of each row; >= num_groups = no group) -> TilePlan (stable: rows of
  one group keep their order)."""
  a = ids.shape[0]
  g = num_groups
  nt = num_tiles(a, g, tile)
  s = nt * tile
  ids = ids.astype(jnp.int32)
  in_group = ids < g
  key = jnp.where(in_group, ids, g)
  order = jnp.argsort(key, stable=True).astype(jnp.int32)          # sorted position -> row
  sizes = jnp.sum(jax.nn.one_hot(key, g, dtype=jnp.int32), axis=0)  # [G]
  tiles = (sizes + tile - 1) // tile
  tile_end = jnp.cumsum(tiles)
  tile_start = tile_end - tiles
  row_start = jnp.cumsum(sizes) - sizes
  sorted_key = key[order]
  sk = jnp.minimum(sorted_key, g - 1)
  slot_sorted = tile_start[sk] * tile + jnp.arange(a, dtype=jnp.int32) - row_start[sk]
  slot_sorted = jnp.where(sorted_key < g, slot_sorted, s)
  slot_of_row = jnp.zeros((a,), jnp.int32).at[order].set(slot_sorted, unique_indices=True)
  # Padding slots keep A; slot index s (out of range) drops the rows in no group.
  row_of_slot = jnp.full((s,), a, jnp.int32).at[slot_sorted].set(order, mode="drop")
  tile_group = jnp.searchsorted(tile_end, jnp.arange(nt, dtype=jnp.int32), side="right")
  tile_group = jnp.minimum(tile_group, g - 1).astype(jnp.int32)
  return TilePlan(slot_of_row, row_of_slot, tile_group)


# ---- take_rows: a gather whose transpose is a gather -------------------------------------

@jax.custom_vjp
def take_rows(x: jax.Array, idx: jax.Array, inv: jax.Array) -> jax.Array:
  """y[i] = x[idx[i]] (zeros where idx[i] == x.shape[0]). x [R, ...], idx int32 [S].

  inv int32 [R, c]: for every source row the (up to c) output rows that read it, padded with
  S. It must be idx's exact transpose; the backward pass is then dx[r] = sum_j dy[inv[r, j]]
  (a gather, where autodiff of a gather would give a scatter-add)."""
  del inv
  return _take(x, idx)


def _take(x, idx, in_bounds: bool = False):
  """jnp.take of rows (zeros for idx == len; in_bounds: every idx is a row, no fill select), a
  bf16 x moved as its uint16 bits: XLA:CPU has no bf16 gather and ran one as f32 with a
  conversion pass on each side."""
  kw = {"mode": "clip"} if in_bounds else {"mode": "fill", "fill_value": 0}
  if x.dtype != jnp.bfloat16:
    return jnp.take(x, idx, axis=0, **kw)
  bits = jnp.take(jax.lax.bitcast_convert_type(x, jnp.uint16), idx, axis=0, **kw)
  return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


def _take_rows_fwd(x, idx, inv):
  return take_rows(x, idx, inv), (idx, inv, x.shape[0])


def _take_rows_bwd(res, dy):
  idx, inv, _ = res
  dx = jnp.sum(_take(dy, inv), axis=1)
  return dx, None, None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


# ---- tiled_dot ---------------------------------------------------------------------------

def _dot_f32(a, b, dims):
  """dot_general with f32 accumulation and output: XLA:CPU runs bf16 x bf16 -> f32 natively
  (AVX512-BF16 / YNNPACK) but upcasts a bf16 -> bf16 dot to f32 first (two extra passes)."""
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


_BATCHED = (((2,), (1,)), ((0,), (0,)))      # [nt,m,K] x [nt,K,N] -> [nt,m,N]
_BATCHED_T = (((2,), (2,)), ((0,), (0,)))    # [nt,m,N] x [nt,K,N] -> [nt,m,K]


def _weight_tiles(w, tile_group, dtype):
  """[nt, K, N]: w[tile_group[t]] cast to dtype (cast first: the gather moves fewer bytes)."""
  return _take(w.astype(dtype), tile_group, in_bounds=True)      # tile_group ids are groups.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tiled_dot(x, w, tile_group, out_dtype):
  return _dot_f32(x, _weight_tiles(w, tile_group, x.dtype), _BATCHED).astype(out_dtype)


def _tiled_dot_fwd(x, w, tile_group, out_dtype):
  # Residuals are the inputs: under the layer scan w is the scanned f32 slice, so neither its
  # cast nor its tiles are stacked for the backward pass (both are recomputed there).
  return _tiled_dot(x, w, tile_group, out_dtype), (x, w, tile_group)


def _tiled_dot_bwd(out_dtype, res, dy):
  del out_dtype
  x, w, tile_group = res
  dy = dy.astype(x.dtype)
  dx = _dot_f32(dy, _weight_tiles(w, tile_group, x.dtype), _BATCHED_T).astype(x.dtype)
  dw = _group_weight_grad(x, dy, tile_group, w.shape)
  return dx, dw.astype(w.dtype), None


def _group_weight_grad(x, dy, tile_group, w_shape):
  """dW[g] = sum over tiles t of group g of x[t]^T @ dy[t]; x [nt,m,K], dy [nt,m,N] -> f32
  [G,K,N], accumulated in place by a loop over tiles (no [nt,K,N] temporary). x is
  transposed once up front: XLA:CPU's fast dot takes [K,m] x [m,N], not a transposed lhs."""
  xt = jnp.swapaxes(x, 1, 2)                                     # [nt, K, m]

  def body(t, acc):
    d = _dot_f32(xt[t], dy[t], (((1,), (0,)), ((), ())))
    at = (tile_group[t], 0, 0)
    old = jax.lax.dynamic_slice(acc, at, (1,) + d.shape)
    return jax.lax.dynamic_update_slice(acc, old + d[None], at)
  return jax.lax.fori_loop(0, x.shape[0], body, jnp.zeros(w_shape, jnp.float32))


_tiled_dot.defvjp(_tiled_dot_fwd, _tiled_dot_bwd)


def tiled_dot(x: jax.Array, w: jax.Array, tile_group: jax.Array,
              preferred_element_type=None) -> jax.Array:
  """x [nt, tile, K], w [G, K, N] (any float dtype, cast to x.dtype), tile_group int32 [nt]
  -> [nt, tile, N]: out[t] = x[t] @ w[tile_group[t]], accumulated in f32, returned in
  `preferred_element_type` (default x.dtype). The weight gradient comes back in w's dtype."""
  if x.ndim != 3 or w.ndim != 3 or x.shape[2] != w.shape[1]:
    raise ValueError(f"tiled_dot: x {x.shape} and w {w.shape} must be [nt,tile,K] and [G,K,N]")
  if tile_group.shape != (x.shape[0],):
    raise ValueError(f"tiled_dot: tile_group shape {tile_group.shape} != ({x.shape[0]},)")
  return _tiled_dot(x, w, tile_group.astype(jnp.int32),
                    jnp.dtype(preferred_element_type or x.dtype))


# ---- the lax.ragged_dot contract ---------------------------------------------------------

def group_of_rows(group_sizes: jax.Array, num_rows: int) -> jax.Array:
  """int32 [num_rows]: group of each row sorted by group; rows past the sum get G."""
  ends = jnp.cumsum(group_sizes.astype(jnp.int32))
  return jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32),
                          side="right").astype(jnp.int32)


def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *,
                   tile: Optional[int] = None, preferred_element_type=None) -> jax.Array:
  """`lax.ragged_dot(lhs, rhs, group_sizes)`: lhs [M, K] rows sorted by group, rhs [G, K, N],
  group_sizes int [G] (sum <= M) -> [M, N]; rows past the sum are zeros. Differentiable in
  lhs and rhs."""
  m, k = lhs.shape
  g = rhs.shape[0]
  if rhs.ndim != 3 or rhs.shape[1] != k:
    raise ValueError(f"grouped_matmul: lhs {lhs.shape} and rhs {rhs.shape} disagree on K")
  if group_sizes.shape != (g,):
    raise ValueError(f"grouped_matmul: group_sizes shape {group_sizes.shape} != ({g},)")
  tile = tile or choose_tile(m, g)
  p = plan(group_of_rows(group_sizes, m), g, tile)
  x = take_rows(lhs, p.row_of_slot, p.slot_of_row[:, None])
  y = tiled_dot(x.reshape(p.num_tiles, tile, k), rhs, p.tile_group, preferred_element_type)
  y = y.reshape(p.num_tiles * tile, -1)
  return take_rows(y, p.slot_of_row, p.row_of_slot[:, None])
