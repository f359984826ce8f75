"""Bidirectional pre-norm transformer encoder blocks shared by the vision and audio encoders.

Block (width W, hidden Fw, no biases):  x += MHA(rms_norm(x)) ; x += w_down(gelu(rms_norm(x) @ w_up))
Params per block (gemini.model.spec, stacked over blocks): norm1/scale [W], attn/{wq,wk,wv [W,h,W/h], wo [h,W/h,W]},
norm2/scale [W], mlp/{w_up [W,Fw], w_down [Fw,W]}. Every item attends to all of its own
positions (no mask: items in one encoder call have equal length). Softmax and norms in f32.
"""

import jax
import jax.numpy as jnp

from gemini.model import norm

NORM_EPS = 1e-6


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


def encode(layers: dict, final_norm: dict, x: jax.Array) -> jax.Array:
  """Runs every block (a scan over `layers`, stacked [Le, ...] as gemini.model.spec lays them
  out) then the final RMSNorm. x [N,L,W] -> [N,L,W]."""
  x, _ = jax.lax.scan(lambda x, p: (block(p, x), None), x, layers)
  return norm.rms_norm(final_norm, x, NORM_EPS)
