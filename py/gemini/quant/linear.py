"""`int4_linear`: x @ W for an `Int4Weight`, through the Pallas kernel or the XLA reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemini.quant.int4 import Int4Weight, dequantize

IMPLS = ("xla", "pallas")


def int4_linear(x: jax.Array, w: Int4Weight, *, impl: str = "xla",
                interpret: bool | None = None) -> jax.Array:
  """x [..., K] (any float dtype) @ W_int4 [K, N] -> f32 [..., N].

  impl "xla": dequantise to f32 and one dot (the reference, and what the C++ runtime
  computes); "pallas": `pallas.int4_matmul` (dequantises tiles in the kernel; interpret
  mode on CPU unless `interpret` says otherwise).
  """
  if x.shape[-1] != w.k:
    raise ValueError(f"int4_linear: x has {x.shape[-1]} input features, weight has K={w.k}")
  lead = x.shape[:-1]
  x2 = x.reshape(-1, w.k)
  if impl == "xla":
    y = jnp.dot(x2.astype(jnp.float32), dequantize(w), preferred_element_type=jnp.float32)
  elif impl == "pallas":
    from pallas.int4_matmul import ops  # Lazy: the XLA path needs no kernels.
    y = ops.int4_matmul(x2, w, interpret=interpret)
  else:
    raise ValueError(f"int4_linear impl={impl!r}: expected one of {IMPLS}")
  return y.reshape(*lead, w.n)


def linear(x: jax.Array, w, *, dtype=jnp.float32, impl: str = "xla") -> jax.Array:
  """x [..., K] @ w -> f32 [..., N] for a float matrix w [K, N] (computed in `dtype`,
  f32 accumulation) or an `Int4Weight`."""
  if isinstance(w, Int4Weight):
    return int4_linear(x, w, impl=impl)
  return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def embed_lookup(table, tokens: jax.Array) -> jax.Array:
  """tokens int [...] -> f32 [..., D] from a float table [V, D] or an int4 W [D, V] (columns)."""
  if isinstance(table, Int4Weight):
    cols = Int4Weight(jnp.take(table.packed, tokens.reshape(-1), axis=1),
                      jnp.take(table.scales, tokens.reshape(-1), axis=1), table.k, table.group_size)
    return dequantize(cols).T.reshape(*tokens.shape, table.k)
  return jnp.take(table, tokens, axis=0).astype(jnp.float32)


def int4_dense(x: jax.Array, w: Int4Weight, in_ndim: int, out_shape, *,
               impl: str = "xla") -> jax.Array:
  """The model-layer hook: x [..., *in] (in_ndim trailing input dims, e.g. 2 for wo's
  [H, Dh]) @ int4 W -> [..., *out_shape] in x.dtype. What `gemini.model` calls in place of
  its einsum when a weight leaf is an `Int4Weight` (quant=int4)."""
  lead = x.shape[:x.ndim - in_ndim]
  y = int4_linear(x.reshape(*lead, -1), w, impl=impl)
  return y.reshape(*lead, *out_shape).astype(x.dtype)
