"""Bidirectional pre-norm transformer encoder blocks shared by the vision and audio encoders.

Block (width W, hidden Fw, no biases):  x += MHA(rms_norm(x)) ; x += w_down(gelu(rms_norm(x) @ w_up))
Params per block (family.py): norm1/scale [W], attn/{wq,wk,wv [W,h,W/h], wo [h,W/h,W]},
norm2/scale [W], mlp/{w_up [W,Fw], w_down [Fw,W]}. Every item attends to all of its own
positions (no mask: items in one encoder call have equal length). Softmax and norms in f32.
"""

from typing import List

import jax
import jax.numpy as jnp

from gemini.model import norm

NORM_EPS = 1e-6


def init_block(key: jax.Array, width: int, heads: int, hidden: int, dtype=jnp.float32) -> dict:
  """One encoder block's params, fan-in scaled normal; norms start at ones."""
  if width % heads:
    raise ValueError(f"encoder: d_model={width} is not a multiple of n_heads={heads}")
  dh = width // heads
  kq, kk, kv, ko, ku, kd = jax.random.split(key, 6)
  s = width ** -0.5
  return {
      "norm1": norm.init_norm(width, dtype),
      "attn": {
          "wq": jax.random.normal(kq, (width, heads, dh), dtype) * s,
          "wk": jax.random.normal(kk, (width, heads, dh), dtype) * s,
          "wv": jax.random.normal(kv, (width, heads, dh), dtype) * s,
          "wo": jax.random.normal(ko, (heads, dh, width), dtype) * s,
      },
      "norm2": norm.init_norm(width, dtype),
      "mlp": {
          "w_up": jax.random.normal(ku, (width, hidden), dtype) * s,
          "w_down": jax.random.normal(kd, (hidden, width), dtype) * hidden ** -0.5,
      },
  }


def init_blocks(key: jax.Array, n: int, width: int, heads: int, hidden: int,
                dtype=jnp.float32) -> List[dict]:
  return [init_block(k, width, heads, hidden, dtype) for k in jax.random.split(key, n)]


def self_attention(p: dict, x: jax.Array) -> jax.Array:
  """x [N,L,W] -> [N,L,W]: full (bidirectional) multi-head attention, f32 softmax."""
  dt = x.dtype
  q = jnp.einsum("nlw,whd->nlhd", x, p["wq"].astype(dt))
  k = jnp.einsum("nlw,whd->nlhd", x, p["wk"].astype(dt))
  v = jnp.einsum("nlw,whd->nlhd", x, p["wv"].astype(dt))
  scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(scores * q.shape[-1] ** -0.5, axis=-1)
  out = jnp.einsum("nhqk,nkhd->nqhd", probs.astype(dt), v)
  return jnp.einsum("nqhd,hdw->nqw", out, p["wo"].astype(dt))


def block(p: dict, x: jax.Array) -> jax.Array:
  """x [N,L,W] (compute dtype) -> [N,L,W]."""
  x = x + self_attention(p["attn"], norm.rms_norm(p["norm1"], x, NORM_EPS))
  h = norm.rms_norm(p["norm2"], x, NORM_EPS)
  dt = x.dtype
  h = jax.nn.gelu(h @ p["mlp"]["w_up"].astype(dt), approximate=True)
  return x + h @ p["mlp"]["w_down"].astype(dt)


def encode(layers: List[dict], final_norm: dict, x: jax.Array) -> jax.Array:
  """Runs every block then the final RMSNorm. x [N,L,W] -> [N,L,W]."""
  for p in layers:
    x = block(p, x)
  return norm.rms_norm(final_norm, x, NORM_EPS)
