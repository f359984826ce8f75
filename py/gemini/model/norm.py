"""RMSNorm: y = x * rsqrt(mean(x^2, -1) + eps) * scale, computed in f32."""

import jax
import jax.numpy as jnp


def rms_norm(params: dict, x: jax.Array, eps: float) -> jax.Array:
  """x [..., D] any float dtype -> [..., D] in x.dtype. Statistics in f32 for stability."""
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (y * params["scale"].astype(jnp.float32)).astype(x.dtype)
