"""The JAX serving engine, in the shape JetStream's engines have:

    prefill(params, tokens) -> Prefix          a prompt's KV row + next-token logits
    insert(prefix, state, slot) -> state       the row into slot `slot` of the decode state
    generate(params, state, controls) -> state, tokens   one token for every slot

The decode state is a fixed batch of `n_slots` cache rows (model_backend) plus each slot's
next-token logits [n_slots, V]; every slot has its own write offset, so requests join and leave
between decode steps. Prompts are prefilled in chunks of `chunk` tokens (`prefill_steps` yields
between chunks so the scheduler can interleave decode steps); the last partial chunk is
left-padded (segment 0, never attended) to the smallest of `chunk_buckets`, so the compiled
shapes are: one decode step, one insert, one prefill per bucket and one prefix restore per
power-of-two snapshot length — never one per request.

A prompt with media (images, audio, video) is prefilled whole in one call: the batch is
`multimodal.build_batch` of the prompt (what training feeds the model), left-padded to the
same padded length a text prompt would take. It neither reads nor writes the prefix cache
(the cache is keyed by token ids, and a media item's placeholder ids say nothing about its
pixels), and it compiles once per media layout (item count and shapes).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import multimodal, spec
from gemini.serve import model_backend, prefix_cache, sampling
from pallas.int4_matmul.weight import Int4Weight


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  n_slots: int = 8
  max_len: int = 512              # cache positions per slot (prompt incl. padding + output)
  chunk: int = 64
  chunk_buckets: Tuple[int, ...] = (8, 16, 32, 64)
  prefix_entries: int = 32        # 0 disables the prefix cache
  int4_impl: str = "xla"          # matmul of Int4Weight leaves: "xla" (dequantise) | "pallas"
  # Batch sizes of the batched prefill of queued prompts (each compiled per chunk bucket);
  # (1,) = one prompt at a time. A group of prompts is padded up to the smallest size >= it.
  prefill_batch: Tuple[int, ...] = (1,)

  def __post_init__(self):
    if self.chunk_buckets[-1] != self.chunk or list(self.chunk_buckets) != sorted(self.chunk_buckets):
      raise ValueError(f"EngineConfig.chunk_buckets={self.chunk_buckets} must be ascending and end "
                       f"at chunk={self.chunk}")
    if self.int4_impl not in ("xla", "pallas"):
      raise ValueError(f"EngineConfig.int4_impl={self.int4_impl!r}: expected 'xla' or 'pallas'")
    if list(self.prefill_batch) != sorted(set(self.prefill_batch)) or self.prefill_batch[0] < 1:
      raise ValueError(f"EngineConfig.prefill_batch={self.prefill_batch} must be ascending "
                       "distinct sizes >= 1")
    if self.n_slots < 1 or self.max_len < self.chunk:
      raise ValueError(f"EngineConfig: n_slots={self.n_slots} must be >= 1 and "
                       f"max_len={self.max_len} >= chunk={self.chunk}")


@dataclasses.dataclass
class Prefix:
  """A prefilled prompt: its batch-1 cache row and the logits for the first new token."""
  row: dict
  logits: jax.Array       # f32 [V]
  length: int             # prompt tokens
  cached: int             # of which were restored from the prefix cache


def padded_length(n: int, cfg: EngineConfig) -> int:
  """Cache positions a prompt of n tokens occupies (full chunks + the bucketed remainder)."""
  full, rem = divmod(n, cfg.chunk)
  return full * cfg.chunk + (0 if rem == 0 else min(b for b in cfg.chunk_buckets if b >= rem))


def _generate_fn(params, state, temperature, top_k, top_p, seeds, counters, mask_bits, forced,
                 cfg, int4_impl="xla", shard=None):
  tokens = sampling.sample_rows(state["logits"], temperature, top_k, top_p, seeds, counters,
                                mask_bits, forced)
  logits, cache = model_backend.decode_slots(params, tokens, state["cache"], cfg, int4_impl)
  return _constrain({"cache": cache, "logits": logits}, shard), tokens


def _insert_fn(state, row, logits, slot, shard=None):
  return _constrain({"cache": model_backend.set_row(state["cache"], row, slot),
                     "logits": state["logits"].at[slot].set(logits.astype(state["logits"].dtype))},
                    shard)


def _constrain(state, shard):
  """The decode state pinned to its mesh layout (shard: a tree of NamedShardings) or as is."""
  return state if shard is None else jax.lax.with_sharding_constraint(state, shard)


_generate = jax.jit(_generate_fn, static_argnames=("cfg", "int4_impl"), donate_argnums=(1,))
_insert = jax.jit(_insert_fn, donate_argnums=(0,))


def state_shardings(state_shapes, mesh) -> dict:
  """NamedShardings of the decode state on `mesh`: k/v [L,B,T,K,Dh] split by slot over the
  batch axes and by kv head over `tensor` (gemini.sharding's rules); the rest replicated."""
  def one(path, x):
    name = getattr(path[-1], "key", None)
    if name in ("k", "v") and len(x.shape) == 5:
      spec = sharding.logical_to_spec(("layers", "batch", None, "act_kv_heads", None), x.shape,
                                      mesh)
    else:
      spec = jax.sharding.PartitionSpec()
    return jax.sharding.NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(one, state_shapes)


def shard_params(params, cfg: ModelConfig, mesh):
  """params placed on `mesh` by the spec's logical axes (model.spec.shardings); Int4Weight
  leaves (packed/scales have their own shapes) are replicated."""
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  def put(sh, w):
    return jax.device_put(w, rep if isinstance(w, Int4Weight) else sh)
  return jax.tree.map(put, spec.shardings(cfg, mesh), params)


class Engine:
  """Functional engine + the prefix cache (see the module docstring)."""

  def __init__(self, params, cfg: ModelConfig, ecfg: EngineConfig = EngineConfig(), mesh=None):
    """mesh: a jax Mesh (gemini.sharding.make_mesh) for tensor/expert/data-parallel serving:
    the parameters are placed by the spec's shardings and the decode state by
    state_shardings; None = one device."""
    if ecfg.max_len > cfg.max_seq_len:
      raise ValueError(f"EngineConfig.max_len={ecfg.max_len} > model max_seq_len={cfg.max_seq_len}")
    self.cfg, self.ecfg, self.mesh = cfg, ecfg, mesh
    self._gen, self._ins, self._state_sharding = _generate, _insert, None
    if mesh is not None:
      params = shard_params(params, cfg, mesh)
      self._state_sharding = state_shardings(jax.eval_shape(self._init_state_unplaced), mesh)
      sh = self._state_sharding
      self._gen = jax.jit(functools.partial(_generate_fn, shard=sh),
                          static_argnames=("cfg", "int4_impl"), donate_argnums=(1,))
      self._ins = jax.jit(functools.partial(_insert_fn, shard=sh), donate_argnums=(0,))
    self.params = params
    self.vocab = cfg.vocab_size
    self.prefix_cache = prefix_cache.PrefixCache(ecfg.prefix_entries)
    self._empty_row = model_backend.init_row(cfg, ecfg.max_len)

  # -- the JetStream face ---------------------------------------------------------------

  def _init_state_unplaced(self) -> dict:
    return {"cache": model_backend.init_slots(self.cfg, self.ecfg.n_slots, self.ecfg.max_len),
            "logits": jnp.zeros((self.ecfg.n_slots, self.cfg.vocab_size), jnp.float32)}

  def init_state(self) -> dict:
    state = self._init_state_unplaced()
    if self._state_sharding is not None:
      state = jax.device_put(state, self._state_sharding)
    return state

  def prefill(self, params, tokens: Sequence[int]) -> Prefix:
    steps = self.prefill_steps(params, tokens)
    while True:
      try:
        next(steps)
      except StopIteration as done:
        return done.value

  def insert(self, prefix: Prefix, state: dict, slot: int) -> dict:
    return self._ins(state, prefix.row, prefix.logits, jnp.int32(slot))

  def generate(self, params, state: dict, controls: "Controls") -> Tuple[dict, np.ndarray]:
    state, tokens = self._gen(params, state, controls.temperature, controls.top_k,
                              controls.top_p, controls.seeds, controls.counters,
                              controls.mask_bits, controls.forced, cfg=self.cfg,
                              int4_impl=self.ecfg.int4_impl)
    return state, np.asarray(tokens)

  def release(self, state: dict, slot: int) -> dict:
    return state                  # a freed row is overwritten by the next insert

  def cache_positions(self, n: int) -> int:
    return padded_length(n, self.ecfg)

  def warmup(self, state: dict) -> dict:
    """Compiles every shape serving uses (each prefill bucket, insert, one generate step) so
    the first requests do not pay for compilation; returns the state (slot 0 overwritten)."""
    entries = self.prefix_cache.max_entries
    self.prefix_cache.max_entries = 0
    try:
      for b in self.ecfg.chunk_buckets:
        state = self.insert(self.prefill(self.params, [1] * b), state, 0)
      for n in self.ecfg.prefill_batch[1:]:
        for b in self.ecfg.chunk_buckets:
          self._prefill_group([[1] * b] * n, b)
      state, _ = self.generate(self.params, state, Controls.idle(self.ecfg.n_slots, self.vocab))
      if entries > 0:                     # snapshot / restore / truncate shapes
        length = prefix_cache.bucket(1)
        while True:
          length = min(length, self.ecfg.max_len)
          snap = model_backend.trim_row(self._empty_row, length=length)
          model_backend.truncate_row(model_backend.untrim_row(self._empty_row, snap), jnp.int32(1))
          if length >= self.ecfg.max_len:
            break
          length *= 2
    finally:
      self.prefix_cache.max_entries = entries
    return state

  # -- chunked prefill with the prefix cache ---------------------------------------------

  def prefill_steps(self, params, tokens: Sequence[int], media=()) -> Iterator[None]:
    """Generator: yields after every chunk; its return value is the Prefix.
    media: (start, kind, array) per item whose placeholder ids are tokens[start:start+n]."""
    tokens = [int(t) for t in tokens]
    if not tokens:
      raise ValueError("prefill: empty prompt")
    need = padded_length(len(tokens), self.ecfg)
    if need > self.ecfg.max_len:
      raise ValueError(f"prompt of {len(tokens)} tokens needs {need} cache positions > "
                       f"max_len {self.ecfg.max_len}")
    if media:
      prefix = self.prefill_media(params, tokens, media)
      yield
      return prefix
    hit, reuse = self.prefix_cache.lookup(tokens)
    if hit is not None and reuse == len(tokens):
      return Prefix(model_backend.untrim_row(self._empty_row, hit.snapshot), hit.logits,
                    len(tokens), len(tokens))
    row, done = self._empty_row, 0
    if hit is not None:
      row, done = model_backend.untrim_row(self._empty_row, hit.snapshot), reuse
      if reuse < len(hit.tokens):
        row = model_backend.truncate_row(row, jnp.int32(reuse))
    aligned = done if hit is None or reuse < len(hit.tokens) else hit.aligned
    cached, logits, c = done, None, self.ecfg.chunk
    while done < len(tokens):
      part = tokens[done:done + c]
      width = c if len(part) == c else min(b for b in self.ecfg.chunk_buckets if b >= len(part))
      if model_backend.row_index(row) + width > self.ecfg.max_len:
        raise ValueError(f"prompt of {len(tokens)} tokens (after a cached prefix of {cached}) "
                         f"does not fit max_len {self.ecfg.max_len}")
      pad = width - len(part)
      toks = np.zeros((1, width), np.int32)
      seg = np.zeros((1, width), np.int32)
      pos = np.zeros((1, width), np.int32)
      toks[0, pad:] = part
      seg[0, pad:] = 1
      pos[0, pad:] = np.arange(done, done + len(part))
      logits, row = model_backend.prefill_row(params, jnp.asarray(toks), jnp.asarray(seg),
                                              jnp.asarray(pos), row, cfg=self.cfg,
                                              int4_impl=self.ecfg.int4_impl)
      if pad == 0 and aligned == done:
        aligned += len(part)
      done += len(part)
      if len(part) == c or done == len(tokens):
        length = prefix_cache.bucket(model_backend.row_index(row))
        length = min(length, self.ecfg.max_len)
        self.prefix_cache.store(tokens[:done], model_backend.trim_row(row, length=length), logits,
                                aligned)
      yield
    return Prefix(row, logits, len(tokens), cached)


  @property
  def batch_prefill(self) -> bool:
    """True if queued prompts are prefilled together (`prefill_batch_steps`)."""
    return self.ecfg.prefill_batch[-1] > 1

  def prefill_batch_steps(self, params, prompts: Sequence[Sequence[int]]) -> Iterator[None]:
    """Several prompts prefilled together. Prompts that fit one chunk and miss the prefix
    cache are grouped by their chunk bucket and run as one `prefill_rows` forward per group
    (at most the largest `prefill_batch` size, padded up to a compiled size with empty rows;
    every prompt gets the cache positions it would alone); the rest go through
    `prefill_steps` one after another. Generator: yields after every forward; returns one
    entry per prompt: its Prefix or the ValueError that refused it."""
    results: list = [None] * len(prompts)
    single, groups = [], {}
    for i, p in enumerate(prompts):
      tokens = [int(t) for t in p]
      hit = self.prefix_cache.lookup(tokens, record=False)[0] if tokens else None
      if not tokens or len(tokens) > self.ecfg.chunk or hit is not None:
        single.append((i, tokens))
      else:
        self.prefix_cache.stats.lookups += 1       # a miss, as prefill_steps would count it
        groups.setdefault(padded_length(len(tokens), self.ecfg), []).append((i, tokens))
    todo = [(w, members[k:k + self.ecfg.prefill_batch[-1]])
            for w, members in sorted(groups.items())
            for k in range(0, len(members), self.ecfg.prefill_batch[-1])]
    for n, (width, members) in enumerate(todo):
      for (i, tokens), prefix in zip(members, self._prefill_group([t for _, t in members], width)):
        results[i] = prefix
      if n + 1 < len(todo) or single:
        yield
    for n, (i, tokens) in enumerate(single):
      try:
        results[i] = yield from self.prefill_steps(params, tokens)
      except ValueError as e:
        results[i] = e
    return results

  def _prefill_group(self, prompts, width: int) -> list:
    """Prompts of at most `width` tokens, each left-padded to `width`, in one forward into
    fresh rows -> their Prefixes (stored in the prefix cache as prefill_steps stores them)."""
    size = min(b for b in self.ecfg.prefill_batch if b >= len(prompts))
    toks, seg, pos = (np.zeros((size, width), np.int32) for _ in range(3))
    for r, p in enumerate(prompts):
      pad = width - len(p)
      toks[r, pad:], seg[r, pad:], pos[r, pad:] = p, 1, np.arange(len(p))
    rows = model_backend.init_slots(self.cfg, size, self.ecfg.max_len)
    logits, rows = model_backend.prefill_rows(self.params, jnp.asarray(toks), jnp.asarray(seg),
                                              jnp.asarray(pos), rows, cfg=self.cfg,
                                              int4_impl=self.ecfg.int4_impl)
    out = []
    for r, (p, row) in enumerate(zip(prompts, model_backend.split_rows(rows))):
      lg = logits[r]
      if self.prefix_cache.max_entries > 0:
        length = min(prefix_cache.bucket(width), self.ecfg.max_len)
        self.prefix_cache.store(p, model_backend.trim_row(row, length=length), lg,
                                len(p) if width == len(p) else 0)
      out.append(Prefix(row, lg, len(p), 0))
    return out

  def media_batch(self, tokens: Sequence[int], media) -> dict:
    """The model batch of one media prompt: build_batch's layout, left-padded to
    padded_length (padding has segment 0; real positions count from 0)."""
    example, at = [], 0
    for start, kind, array in sorted(media, key=lambda m: m[0]):
      n = multimodal.num_tokens(kind, np.shape(array), self.cfg)
      if start < at or start + n > len(tokens):
        raise ValueError(f"media {kind} at {start} (+{n} tokens) overlaps the previous item or "
                         f"runs past the prompt of {len(tokens)} tokens")
      example += [("text", tokens[at:start]), (kind, array)]
      at = start + n
    example.append(("text", tokens[at:]))
    n = len(tokens)
    batch = multimodal.build_batch([example], self.cfg, n)
    pad = padded_length(n, self.ecfg) - n
    out = {}
    for key in ("tokens", "segment_ids", "positions"):
      out[key] = np.pad(batch[key], ((0, 0), (pad, 0)))
    for key in multimodal.LAYOUT_KEYS:
      out[key] = batch[key]
    out["media_start"] = batch["media_start"] + pad * (batch["media_kind"] != 0)
    for key in multimodal.ARRAY_KEYS.values():
      if key in batch:
        out[key] = batch[key]
    return out

  def prefill_media(self, params, tokens: Sequence[int], media) -> Prefix:
    """A whole media prompt into a fresh row (see the module docstring)."""
    batch = self.media_batch(tokens, media)
    multimodal.validate_batch(batch, self.cfg)
    logits, row = model_backend.prefill_row_media(
        params, jax.tree.map(jnp.asarray, batch), self._empty_row, self.cfg,
        self.ecfg.int4_impl)
    return Prefix(row, logits, len(tokens), 0)


@dataclasses.dataclass
class Controls:
  """Per-slot sampling inputs of one generate step (numpy, length n_slots)."""
  temperature: np.ndarray
  top_k: np.ndarray
  top_p: np.ndarray
  seeds: np.ndarray
  counters: np.ndarray
  mask_bits: np.ndarray
  forced: np.ndarray

  @staticmethod
  def idle(n_slots: int, vocab: int) -> "Controls":
    return Controls(np.zeros(n_slots, np.float32), np.zeros(n_slots, np.int32),
                    np.ones(n_slots, np.float32), np.zeros(n_slots, np.uint32),
                    np.zeros(n_slots, np.int32), sampling.all_allowed(n_slots, vocab),
                    np.full(n_slots, -1, np.int32))
