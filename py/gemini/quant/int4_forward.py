"""A text-only dense decoder forward whose matmuls take float or int4 weights.

Mirrors `gemini.model.transformer.forward` (same tree, same shared math conventions: RMSNorm,
rotate-half RoPE, GQA attention with an f32 softmax, gated MLP, tied/untied logits, soft-cap)
and reuses the model's norm/rope/attention/activation functions. Every matmul goes through
`gemini.quant.linear.linear`, so a leaf may be a float array or an `Int4Weight`: the same code
is the bf16/f32 baseline, the JAX int4 serving path and the golden reference of the C++
runtime (which computes in f32 with the same dequantised weights). Activations are f32;
`dtype` is the matmul input dtype of float weights (f32 accumulation).
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import attention as attn_lib
from gemini.model import mlp as mlp_lib
from gemini.model import norm, rope
from gemini.quant.int4 import Int4Weight
from gemini.quant.linear import embed_lookup, linear
from gemini.quant.params import matrix_view


def _mat(w, name: str):
  return w if isinstance(w, Int4Weight) else matrix_view(name, w)


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Dict[str, jax.Array]:
  """KV cache {'k','v'}: f32 [L, B, max_len, K, Dh], zeros."""
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, jnp.float32), "v": jnp.zeros(shape, jnp.float32)}


def forward(params: dict, tokens: jax.Array, cfg: ModelConfig, *,
            cache: Optional[Dict[str, jax.Array]] = None, cache_index=0,
            dtype=jnp.float32, impl: str = "xla", collect: bool = False):
  """tokens int32 [B,S] -> (logits f32 [B,S,V], cache or None, acts dict).

  Without a cache: causal self-attention over positions 0..S-1. With a cache (from
  `init_cache`): the tokens sit at positions cache_index..cache_index+S-1, their K/V are
  written there and they attend to every cached position <= their own.
  acts (collect=True): the inputs of each layer's matmuls, f32, keyed
  '<i>/attn' [B,S,D], '<i>/wo' [B,S,H*Dh], '<i>/mlp' [B,S,D], '<i>/w_down' [B,S,F].
  """
  b, s = tokens.shape
  h_, k_, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  positions = jnp.broadcast_to(cache_index + jnp.arange(s, dtype=jnp.int32), (b, s))
  lin = functools.partial(linear, dtype=dtype, impl=impl)
  act = mlp_lib.activation(cfg.activation)
  acts = {}
  x = embed_lookup(params["embed"]["tokens"], tokens)
  for i, lp in enumerate(params["layers"]):
    a = lp["attn"]
    h = norm.rms_norm(lp["attn_norm"], x, cfg.norm_eps)
    q = lin(h, _mat(a["wq"], "wq")).reshape(b, s, h_, dh)
    k = lin(h, _mat(a["wk"], "wk")).reshape(b, s, k_, dh)
    v = lin(h, _mat(a["wv"], "wv")).reshape(b, s, k_, dh)
    q = rope.apply_rope(q, positions, cfg.rope_base)
    k = rope.apply_rope(k, positions, cfg.rope_base)
    if cache is None:
      ones = jnp.ones((b, s), jnp.int32)
      mask = attn_lib.make_mask(ones, ones, positions, positions)
    else:
      start = (0, jnp.asarray(cache_index, jnp.int32), 0, 0)
      cache = {"k": cache["k"].at[i].set(jax.lax.dynamic_update_slice(cache["k"][i], k, start)),
               "v": cache["v"].at[i].set(jax.lax.dynamic_update_slice(cache["v"][i], v, start))}
      k, v = cache["k"][i], cache["v"][i]
      k_pos = jnp.arange(k.shape[1], dtype=jnp.int32)
      mask = jnp.broadcast_to(k_pos[None, None, :] <= positions[:, :, None], (b, s, k.shape[1]))
    o = attn_lib.dot_product_attention(q, k, v, mask).reshape(b, s, h_ * dh)
    x = x + lin(o, _mat(a["wo"], "wo"))
    h2 = norm.rms_norm(lp["mlp_norm"], x, cfg.norm_eps)
    m = lp["mlp"]
    hidden = act(lin(h2, m["w_gate"])) * lin(h2, m["w_up"])
    x = x + lin(hidden, m["w_down"])
    if collect:
      acts.update({f"{i}/attn": h, f"{i}/wo": o, f"{i}/mlp": h2, f"{i}/w_down": hidden})
  x = norm.rms_norm(params["final_norm"], x, cfg.norm_eps)
  w_out = _mat(params["embed"]["tokens"], "embed") if cfg.tie_embeddings else params["unembed"]
  logits = lin(x, w_out)
  if cfg.logit_softcap > 0:
    logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
  return logits, cache, acts


def loss(params: dict, tokens: jax.Array, targets: jax.Array, cfg: ModelConfig, *,
         dtype=jnp.float32, impl: str = "xla") -> jax.Array:
  """Mean next-token cross entropy (f32 scalar) of tokens/targets int32 [B,S]."""
  logits, _, _ = forward(params, tokens, cfg, dtype=dtype, impl=impl)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def greedy_generate(params: dict, prompt: Sequence[int], cfg: ModelConfig, max_new_tokens: int,
                    *, impl: str = "xla", eos_id: Optional[int] = None) -> List[int]:
  """Greedy continuation of one prompt (list of ids) with a KV cache -> list of new ids
  (stops after eos_id when given)."""
  p = len(prompt)
  cache = init_cache(cfg, 1, p + max_new_tokens)

  @jax.jit
  def prefill(params, tokens, cache):
    logits, cache, _ = forward(params, tokens, cfg, cache=cache, cache_index=0, impl=impl)
    return jnp.argmax(logits[0, -1]).astype(jnp.int32), cache

  @jax.jit
  def step(params, token, cache, index):
    logits, cache, _ = forward(params, token.reshape(1, 1), cfg, cache=cache, cache_index=index,
                               impl=impl)
    return jnp.argmax(logits[0, -1]).astype(jnp.int32), cache

  tok, cache = prefill(params, jnp.asarray([prompt], jnp.int32), cache)
  out = [int(tok)]
  for t in range(1, max_new_tokens):
    if eos_id is not None and out[-1] == eos_id:
      break
    tok, cache = step(params, tok, cache, jnp.int32(p + t - 1))
    out.append(int(tok))
  return out
