"""Rotary position embedding in the rotate-half (NeoX) layout.

Pairs are (i, i + Dh/2) with inv_freq_i = base^(-2i/Dh) and angle = position * inv_freq_i.
Angles and the rotation are computed in f32 (bf16 positions lose integer precision > 256).
"""

import jax
import jax.numpy as jnp


def inv_frequencies(head_dim: int, base: float) -> jax.Array:
  """[Dh/2] f32."""
  return base ** (-jnp.arange(0, head_dim // 2, dtype=jnp.float32) * 2.0 / head_dim)


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """x [B,S,N,Dh], positions int [B,S] -> [B,S,N,Dh] in x.dtype."""
  dh = x.shape[-1]
  if dh % 2:
    raise ValueError(f"rope: head_dim={dh} must be even")
  angle = positions.astype(jnp.float32)[..., None] * inv_frequencies(dh, base)  # [B,S,Dh/2]
  cos = jnp.cos(angle)[:, :, None, :]
  sin = jnp.sin(angle)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : dh // 2], xf[..., dh // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
