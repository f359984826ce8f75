"""Token embedding and output logits (tied with the embedding or a separate unembed)."""

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig


def init_embed(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> dict:
  """{'tokens': [V,D]} with std 1/sqrt(D), so tied logits of a unit-RMS x start with unit
  variance (loss at init ~= ln V + 1/2)."""
  return {"tokens": jax.random.normal(key, (cfg.vocab_size, cfg.d_model), dtype)
          * cfg.d_model ** -0.5}


def init_unembed(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> jax.Array:
  """[D,V] output projection, used only when cfg.tie_embeddings is False."""
  return jax.random.normal(key, (cfg.d_model, cfg.vocab_size), dtype) * cfg.d_model ** -0.5


def embed_tokens(params: dict, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
  """tokens int [B,S] -> [B,S,D] in cfg.dtype (plain lookup, no sqrt(D) scaling)."""
  return jnp.take(params["embed"]["tokens"], tokens, axis=0).astype(cfg.dtype)


def logits(params: dict, x: jax.Array, cfg: ModelConfig) -> jax.Array:
  """x [B,S,D] (already final-normed) -> logits f32 [B,S,V], soft-capped if configured."""
  w = params["embed"]["tokens"].T if cfg.tie_embeddings else params["unembed"]
  out = jnp.einsum("bsd,dv->bsv", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  if cfg.logit_softcap > 0:
    out = cfg.logit_softcap * jnp.tanh(out / cfg.logit_softcap)
  return out
