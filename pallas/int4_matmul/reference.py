"""Pure-JAX reference of the int4 matmul: dequantise the whole matrix, one f32 dot."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas.int4_matmul.weight import Int4Weight, dequantize


def int4_matmul(x: jax.Array, w: Int4Weight) -> jax.Array:
  """x [M, K] (any float dtype) @ W_int4 [K, N] -> f32 [M, N]."""
  return jnp.dot(x.astype(jnp.float32), dequantize(w), preferred_element_type=jnp.float32)
