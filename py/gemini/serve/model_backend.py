"""The one place the serving engine touches the model's KV cache layout.

The engine needs a cache of `n_slots` rows where every row has its own write offset (requests
join and leave at different lengths), and row get/set so a prefilled prompt can be inserted into
a slot. `gemini.model.decode` keeps a per-row `index [B]` with k/v stacked `[L,B,T,K,Dh]`
(slot axis 1 for k/v, 0 for everything else) once the stacked core lands; a cache with a scalar
`index []` and a per-layer list is the older layout. Both are handled here:

- stacked layout: the batched cache is decode's own; rows are tree slices.
- list layout: the batched cache is n_slots stacked batch-1 caches (a leading slot axis on every
  leaf) and the batched step is `vmap` of decode_step over it, which gives each row its own index.

Everything else in serve/ calls only `init_slots`, `init_row`, `prefill_row`, `prefill_rows`
(several prompts' chunks into a batch of rows, `split_rows` back to batch-1 rows), `decode_slots`,
`get_row`, `set_row`, `row_index`, `trim_row`/`untrim_row` (the prefix cache's snapshots) and
`truncate_row` (keep a snapshot's first n tokens).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import decode


def stacked_layout(cfg: ModelConfig) -> bool:
  """True if decode.init_cache gives the stacked [L,B,T,K,Dh] cache with a per-row index."""
  shapes = jax.eval_shape(lambda: decode.init_cache(cfg, 2, 8))
  return "layers" not in shapes and shapes["index"].shape == (2,)


def _slot_axis(path) -> int:
  """Slot axis of a leaf of the stacked cache: 1 for k/v, 0 for the rest."""
  name = getattr(path[0], "key", None)
  return 1 if name in ("k", "v") else 0


def init_row(cfg: ModelConfig, max_len: int) -> dict:
  """An empty batch-1 cache (one slot)."""
  return decode.init_cache(cfg, 1, max_len)


def init_slots(cfg: ModelConfig, n_slots: int, max_len: int) -> dict:
  """The engine's batched cache of n_slots rows, every row empty."""
  if stacked_layout(cfg):
    # Distinct buffers per leaf (init_cache may share one zeros array between leaves, and the
    # decode step donates the state).
    return jax.tree.map(lambda x: jnp.array(x, copy=True), decode.init_cache(cfg, n_slots, max_len))
  row = init_row(cfg, max_len)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n_slots,) + x.shape), row)


@functools.partial(jax.jit, static_argnames=("cfg", "int4_impl"))
def prefill_row(params, tokens, segment_ids, positions, row, cfg: ModelConfig,
                int4_impl: str = "xla"):
  """One prompt chunk tokens/segment_ids/positions int32 [1,S] into a batch-1 cache row.
  -> (logits of the chunk's last column f32 [V], row). int4_impl: the matmul of Int4Weight
  leaves (float trees ignore it)."""
  logits, row = decode.prefill(params, {"tokens": tokens, "segment_ids": segment_ids,
                                        "positions": positions}, row, cfg, int4_impl=int4_impl)
  return logits[0, -1], row


@functools.partial(jax.jit, static_argnames=("cfg", "int4_impl"))
def prefill_rows(params, tokens, segment_ids, positions, rows, cfg: ModelConfig,
                 int4_impl: str = "xla"):
  """One chunk of each of B prompts, tokens/segment_ids/positions int32 [B,S] (each row
  left-padded), into B cache rows (`init_slots(cfg, B, ...)`-shaped) in one forward.
  -> (each row's last-column logits f32 [B,V], rows)."""
  if _is_stacked(rows):
    logits, rows = decode.prefill(params, {"tokens": tokens, "segment_ids": segment_ids,
                                           "positions": positions}, rows, cfg,
                                  int4_impl=int4_impl)
    return logits[:, -1], rows

  def one(t, s, p, row):
    logits, row = decode.prefill(params, {"tokens": t[None], "segment_ids": s[None],
                                          "positions": p[None]}, row, cfg, int4_impl=int4_impl)
    return logits[0, -1], row

  return jax.vmap(one)(tokens, segment_ids, positions, rows)


@jax.jit
def split_rows(rows):
  """B cache rows (a batched cache) -> a list of B batch-1 rows."""
  n = rows["index"].shape[0]
  return [get_row(rows, i) for i in range(n)]


def prefill_row_media(params, batch: dict, row, cfg: ModelConfig, int4_impl: str = "xla"):
  """A whole multimodal prompt (batch of one row, media arrays included) into a row; not
  jitted per shape bucket, media prompts compile per layout."""
  logits, row = _jit_prefill_batch(params, batch, row, cfg=cfg, int4_impl=int4_impl)
  return logits[0, -1], row


@functools.partial(jax.jit, static_argnames=("cfg", "int4_impl"))
def _jit_prefill_batch(params, batch, row, cfg, int4_impl):
  return decode.prefill(params, batch, row, cfg, int4_impl=int4_impl)


def decode_slots(params, tokens, cache, cfg: ModelConfig, int4_impl: str = "xla"):
  """tokens int32 [n_slots] -> (logits f32 [n_slots,V], cache); each row at its own offset."""
  if _is_stacked(cache):
    return decode.decode_step(params, tokens, cache, cfg, int4_impl=int4_impl)

  def one(tok, row):
    logits, row = decode.decode_step(params, tok[None], row, cfg, int4_impl=int4_impl)
    return logits[0], row

  return jax.vmap(one)(tokens, cache)


def _is_stacked(cache) -> bool:
  return "layers" not in cache


def get_row(cache, slot):
  """Row `slot` of the batched cache as a batch-1 cache."""
  if _is_stacked(cache):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.lax.dynamic_slice_in_dim(x, slot, 1, _slot_axis(p)), cache)
  return jax.tree.map(lambda x: x[slot], cache)


def set_row(cache, row, slot):
  """The batched cache with row `slot` replaced by the batch-1 cache `row`."""
  if _is_stacked(cache):
    return jax.tree_util.tree_map_with_path(
        lambda p, x, r: jax.lax.dynamic_update_slice_in_dim(x, r.astype(x.dtype), slot,
                                                            _slot_axis(p)), cache, row)
  return jax.tree.map(lambda x, r: x.at[slot].set(r.astype(x.dtype)), cache, row)


def row_index(row) -> int:
  """Tokens (incl. padding) written into a batch-1 row: its write offset."""
  return int(jnp.reshape(row["index"], (-1,))[0])


def _time_axis(x) -> int:
  """Axis of T in a batch-1 row leaf (k/v [L,1,T,K,Dh] or [1,T,K,Dh], the rest [1,T]); -1 for
  leaves without one (index, next_position, segment)."""
  if x.ndim >= 4:
    return x.ndim - 3
  return 1 if x.ndim == 2 else -1


@functools.partial(jax.jit, static_argnames=("length",))
def trim_row(row, length: int):
  """The first `length` cache positions of a batch-1 row (a prefix-cache snapshot)."""
  def cut(x):
    ax = _time_axis(x)
    return x if ax < 0 else jax.lax.slice_in_dim(x, 0, length, axis=ax)
  return jax.tree.map(cut, row)


@jax.jit
def untrim_row(empty_row, snapshot):
  """An empty full-length row with a snapshot from trim_row written at its start."""
  def put(e, s):
    ax = _time_axis(e)
    if ax < 0:
      return s.astype(e.dtype)
    return jax.lax.dynamic_update_slice_in_dim(e, s.astype(e.dtype), 0, ax)
  return jax.tree.map(put, empty_row, snapshot)


@jax.jit
def truncate_row(row, n):
  """A batch-1 row whose first n cache positions hold tokens 0..n-1 (no padding among them),
  cut back to those n: later positions are marked unwritten and the write offset is n."""
  t = row["segment_ids"].shape[-1]
  out = dict(row)
  out["segment_ids"] = jnp.where(jnp.arange(t) < n, row["segment_ids"], 0)
  out["index"] = jnp.full_like(row["index"], n)
  out["next_position"] = jnp.full_like(row["next_position"], n)
  out["segment"] = jnp.ones_like(row["segment"])
  return out
