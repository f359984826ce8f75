"""Token embedding and output logits (tied with the embedding or a separate unembed).

Init lives in gemini.model.spec (embedding rows have std 1/sqrt(D), so tied logits of a
unit-RMS x start with unit variance: loss at init ~= ln V + 1/2). The table and the unembed
may be float or int4 (`gemini.model.dense`).
"""

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import dense


def embed_tokens(params: dict, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
  """tokens int [B,S] -> [B,S,D] in cfg.dtype (plain lookup, no sqrt(D) scaling)."""
  return dense.lookup(params["embed"]["tokens"], tokens, cfg.dtype)


def logits(params: dict, x: jax.Array, cfg: ModelConfig, *, int4_impl: str = "xla") -> jax.Array:
  """x [B,S,D] (already final-normed) -> logits f32 [B,S,V], soft-capped if configured."""
  w = params["embed"]["tokens"] if cfg.tie_embeddings else params["unembed"]
  if dense.is_int4(w):
    out = dense.dense(x, w, impl=int4_impl).astype(jnp.float32)
  else:   # f32 logits; the backward casts their cotangent to x.dtype (dense.matmul).
    out = dense.matmul(x, w, out_dtype=jnp.float32, w_in_last=cfg.tie_embeddings)
  if cfg.logit_softcap > 0:
    out = cfg.logit_softcap * jnp.tanh(out / cfg.logit_softcap)
  return out
