"""Test helpers: random family-tree params independent of gemini.model's initialiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig


def random_params(cfg: ModelConfig, key: jax.Array, norm_jitter: float = 0.1) -> dict:
  """Fan-in scaled normal weights in the family.py tree (dense text decoder), f32."""
  keys = iter(jax.random.split(key, 8 * cfg.n_layers + 8))
  nrm = lambda shape, fan: jax.random.normal(next(keys), shape) * fan ** -0.5
  d, h, kh, dh, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  scale = lambda: 1 + norm_jitter * jax.random.normal(next(keys), (d,))
  layers = [{"attn_norm": {"scale": scale()},
             "attn": {"wq": nrm((d, h, dh), d), "wk": nrm((d, kh, dh), d),
                      "wv": nrm((d, kh, dh), d), "wo": nrm((h, dh, d), h * dh)},
             "mlp_norm": {"scale": scale()},
             "mlp": {"w_gate": nrm((d, f), d), "w_up": nrm((d, f), d), "w_down": nrm((f, d), f)}}
            for _ in range(cfg.n_layers)]
  out = {"embed": {"tokens": nrm((cfg.vocab_size, d), d)}, "layers": layers,
         "final_norm": {"scale": scale()}}
  if not cfg.tie_embeddings:
    out["unembed"] = nrm((d, cfg.vocab_size), d)
  return out
