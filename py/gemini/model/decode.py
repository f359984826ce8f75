"""Autoregressive decoding: KV cache, prefill, decode step, sampling, generate.

The cache holds rotated keys and values of every layer, k/v [L,B,T,K,Dh] (K = n_kv_heads, so
MQA caches one head), per-slot segment ids, positions and bidir ids [B,T], and per row the
write offset `index` [B], the next position and the current segment [B]. Rows are
independent (a serving engine's slots): every call (`prefill` with a chunk, `decode_step`
with one token per row) writes row b's new keys at [index[b], index[b]+S) and attends over
the whole cache with the shared mask; unwritten slots have segment 0 and are never attended,
so cached logits equal the full forward's. The batch (slot) axis is 1 for k/v and 0 for
everything else. The decoder layers run as the training forward's scan, carrying the cache.

Ragged prompts are left-padded with segment id 0 on the padding (positions then start at 0 at
each row's first real token), so every row's last prompt token sits in the last column.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import attention, embed, norm, transformer

BATCH_AXES = {"k": 1, "v": 1}   # every other cache entry has its batch axis at 0


def init_cache(cfg: ModelConfig, batch_size: int, max_len: Optional[int] = None,
               dtype=None) -> dict:
  """Empty cache for T = max_len tokens (default cfg.max_seq_len): k/v zeros [L,B,T,K,Dh]
  (cfg.dtype), segment_ids/positions/bidir_ids int32 [B,T], index/next_position int32 [B]
  zeros, segment int32 [B] ones. Bytes: family.kv_bytes_per_token(cfg) * B * T (bf16)."""
  max_len = cfg.max_seq_len if max_len is None else max_len
  if max_len > cfg.max_seq_len:
    raise ValueError(f"init_cache: max_len={max_len} > cfg.max_seq_len={cfg.max_seq_len}")
  dt = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
  # Distinct arrays per entry (never one buffer under two keys): callers donate the cache.
  bt = lambda: jnp.zeros((batch_size, max_len), jnp.int32)
  b = lambda: jnp.zeros((batch_size,), jnp.int32)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt),
          "segment_ids": bt(), "positions": bt(), "bidir_ids": bt(),
          "index": b(), "next_position": b(), "segment": b() + 1}


def _put_rows(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """buf [B,T,...] with new [B,S,...] written at row b's offset index[b]."""
  return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice_in_dim(b, n.astype(b.dtype), i, 0)
                  )(buf, new, index)


def _put_layer(buf: jax.Array, new: jax.Array, layer, index: jax.Array) -> jax.Array:
  """buf [L,B,T,K,Dh] with new [B,S,K,Dh] written at layer `layer`, row offsets index [B]."""
  def one(b, n, i):  # b [L,T,K,Dh], n [S,K,Dh]
    return jax.lax.dynamic_update_slice(b, n[None].astype(b.dtype), (layer, i, 0, 0))
  return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(buf, new, index)


def _check_room(cache: dict, s: int):
  idx, t = cache["index"], cache["segment_ids"].shape[1]
  if not isinstance(idx, jax.core.Tracer) and int(jnp.max(idx)) + s > t:
    raise ValueError(f"KV cache overflow: {int(jnp.max(idx))} cached + {s} new tokens > "
                     f"cache length {t}")


def _extend(params, x, segment_ids, positions, bidir_ids, cache, cfg, moe_impl, int4_impl):
  """Writes a chunk x [B,S,D] into the cache and runs the decoder on it -> logits [B,S,V]."""
  s = segment_ids.shape[1]
  _check_room(cache, s)
  idx = cache["index"]
  if bidir_ids is None:
    bidir_ids = jnp.zeros_like(segment_ids)
  c_seg = _put_rows(cache["segment_ids"], segment_ids, idx)
  c_pos = _put_rows(cache["positions"], positions, idx)
  c_bid = _put_rows(cache["bidir_ids"], bidir_ids, idx)
  mask = attention.make_mask(segment_ids, c_seg, positions, c_pos, bidir_ids, c_bid)

  def layer_fn(lp, x, is_moe, layer, kv):
    def attn_fn(p, h):
      q, k, v = attention.project_qkv(p, h, positions, cfg, int4_impl=int4_impl)
      ck, cv = _put_layer(kv[0], k, layer, idx), _put_layer(kv[1], v, layer, idx)
      lk = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(q.dtype)
      lv = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(q.dtype)
      o = attention.dot_product_attention(q, lk, lv, mask)
      return attention.output_projection(p, o, cfg, int4_impl=int4_impl), (ck, cv)
    return transformer.decoder_layer(lp, x, attn_fn, cfg, is_moe, moe_impl=moe_impl,
                                     int4_impl=int4_impl)

  x, _, (ck, cv) = transformer.scan_decoder(params, x, cfg, layer_fn, (cache["k"], cache["v"]))
  x = norm.rms_norm(params["final_norm"], x, cfg.norm_eps)
  logits = embed.logits(params, x, cfg, int4_impl=int4_impl)
  cache = {"k": ck, "v": cv, "segment_ids": c_seg, "positions": c_pos, "bidir_ids": c_bid,
           "index": idx + s, "next_position": positions[:, -1] + 1, "segment": segment_ids[:, -1]}
  return logits, cache


def prefill(params: dict, batch: dict, cache: dict, cfg: ModelConfig, *, moe_impl: str = "xla",
            int4_impl: str = "xla"):
  """Runs a prompt chunk (batch as for transformer.forward, media allowed) through the model,
  filling the cache. -> (logits f32 [B,S,V], cache). May be called repeatedly for chunks."""
  x, segment_ids, positions, bidir_ids = transformer.embed_inputs(params, batch, cfg)
  return _extend(params, x, segment_ids, positions, bidir_ids, cache, cfg, moe_impl, int4_impl)


def decode_step(params: dict, tokens: jax.Array, cache: dict, cfg: ModelConfig, *,
                moe_impl: str = "xla", int4_impl: str = "xla"):
  """One token per row: tokens int32 [B] -> (logits f32 [B,V], cache). The token continues
  each row's last segment at its next position."""
  x = embed.embed_tokens(params, tokens[:, None], cfg)
  logits, cache = _extend(params, x, cache["segment"][:, None], cache["next_position"][:, None],
                          None, cache, cfg, moe_impl, int4_impl)
  return logits[:, 0], cache


def sample(logits: jax.Array, key: Optional[jax.Array], temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """logits f32 [B,V] -> token ids int32 [B]. temperature 0 = greedy (key unused);
  top_k > 0 keeps the k largest; top_p < 1 keeps the smallest set whose mass reaches top_p."""
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  neg = jnp.finfo(jnp.float32).min
  lg = logits.astype(jnp.float32) / temperature
  if top_k > 0:
    kth = jax.lax.top_k(lg, top_k)[0][:, -1:]
    lg = jnp.where(lg < kth, neg, lg)
  if top_p < 1.0:
    srt = jnp.sort(lg, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p                    # always keeps the top token
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    lg = jnp.where(lg < thresh, neg, lg)
  return jax.random.categorical(key, lg, axis=-1).astype(jnp.int32)


# Jitted entry points (cfg static; one compilation per cache/prompt shape), shared by
# `generate`, the serving engine and tests.
jit_prefill = jax.jit(prefill, static_argnames=("cfg", "moe_impl", "int4_impl"))
jit_decode_step = jax.jit(decode_step, static_argnames=("cfg", "moe_impl", "int4_impl"))


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "top_k", "top_p", "int4_impl"))
def _sample_and_step(params, logits, key, cache, cfg, temperature, top_k, top_p, int4_impl):
  tok = sample(logits, key, temperature, top_k, top_p)
  logits, cache = decode_step(params, tok, cache, cfg, int4_impl=int4_impl)
  return tok, logits, cache


def generate(params: dict, prompt: jax.Array, cfg: ModelConfig, max_new_tokens: int, *,
             key: Optional[jax.Array] = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, prompt_segment_ids: Optional[jax.Array] = None,
             eos_id: Optional[int] = None, max_len: Optional[int] = None,
             int4_impl: str = "xla") -> jax.Array:
  """prompt int32 [B,P] (left-padded, padding has prompt_segment_ids 0) -> new tokens int32
  [B,max_new_tokens]. Rows that emitted eos_id are padded with eos_id; stops early when all
  rows are done. Float or int4 params (int4_impl picks the int4 matmul)."""
  b, p = prompt.shape
  max_len = max_len or p + max_new_tokens
  if p + max_new_tokens > max_len:
    raise ValueError(f"generate: prompt {p} + max_new_tokens {max_new_tokens} > max_len {max_len}")
  if temperature > 0 and key is None:
    raise ValueError("generate: sampling with temperature > 0 needs a PRNG key")
  key = jax.random.key(0) if key is None else key
  seg = (jnp.ones((b, p), jnp.int32) if prompt_segment_ids is None
         else jnp.asarray(prompt_segment_ids, jnp.int32))
  positions = jnp.maximum(jnp.cumsum(seg != 0, axis=1) - 1, 0).astype(jnp.int32)
  cache = init_cache(cfg, b, max_len)
  logits, cache = jit_prefill(params, {"tokens": prompt, "segment_ids": seg,
                                       "positions": positions}, cache, cfg=cfg,
                        int4_impl=int4_impl)
  logits = logits[:, -1]
  out, done = [], jnp.zeros((b,), bool)
  for step in range(max_new_tokens):
    tok, new_logits, new_cache = _sample_and_step(params, logits, jax.random.fold_in(key, step),
                                                  cache, cfg, temperature, top_k, top_p, int4_impl)
    if eos_id is not None:
      tok = jnp.where(done, eos_id, tok)
      done = done | (tok == eos_id)
    out.append(tok)
    if eos_id is not None and bool(jnp.all(done)):
      out += [jnp.full((b,), eos_id, jnp.int32)] * (max_new_tokens - step - 1)
      break
    logits, cache = new_logits, new_cache
  return jnp.stack(out, axis=1)
