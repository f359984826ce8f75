"""`dense(x, w)`: the model's one matmul, for float arrays and int4 weights alike.

A float weight w [*in, *out] contracts the last `n_in` axes of x (cast to x.dtype, as the
mixed-precision policy says); an `Int4Weight` (the int4 view W[K, N] of the same leaf, see
gemini.model.spec) multiplies x[..., K] through the XLA reference (dequantise, one f32 dot —
what the C++ runtime computes) or the Pallas kernel, and is reshaped to `out`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from pallas.int4_matmul import ops as int4_ops
from pallas.int4_matmul.weight import Int4Weight, dequantize

IMPLS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class Tapped:
  """A float weight that reports its matmul input: dense() calls sink(name, x) (ordered, from
  inside jit and scan), then multiplies as usual. AWQ calibrates with it on the one forward."""
  w: jax.Array
  name: str
  sink: Callable


jax.tree_util.register_dataclass(Tapped, data_fields=["w"], meta_fields=["name", "sink"])


def dense(x: jax.Array, w, n_in: int = 1, out: Optional[Sequence[int]] = None, *,
          impl: str = "xla") -> jax.Array:
  """x [..., *in] @ w -> [..., *out] in x.dtype (f32 accumulation for int4)."""
  if isinstance(w, Tapped):
    jax.debug.callback(w.sink, w.name, x, ordered=True)
    w = w.w
  if not isinstance(w, Int4Weight):
    return jnp.tensordot(x, w.astype(x.dtype), axes=n_in)
  lead = x.shape[:x.ndim - n_in]
  x2 = x.reshape(-1, w.k)
  if impl == "xla":
    y = jnp.dot(x2.astype(jnp.float32), dequantize(w), preferred_element_type=jnp.float32)
  elif impl == "pallas":
    y = int4_ops.int4_matmul(x2, w)
  else:
    raise ValueError(f"dense: int4 impl={impl!r}: expected one of {IMPLS}")
  return y.reshape(*lead, *(out if out is not None else (w.n,))).astype(x.dtype)


def lookup(table, tokens: jax.Array, dtype) -> jax.Array:
  """Embedding rows: tokens int [...] -> [..., D] in dtype, from a float table [V, D] or the
  int4 view W [D, V] (a token's row is a column there)."""
  if isinstance(table, Int4Weight):
    flat = tokens.reshape(-1)
    cols = Int4Weight(jnp.take(table.packed, flat, axis=1), jnp.take(table.scales, flat, axis=1),
                      table.k, table.group_size)
    return dequantize(cols).T.reshape(*tokens.shape, table.k).astype(dtype)
  return jnp.take(table, tokens, axis=0).astype(dtype)


def is_int4(w) -> bool:
  return isinstance(w, Int4Weight)
