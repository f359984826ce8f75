"""`dense(x, w)`: the model's one matmul, for float arrays and int4 weights alike.

A float weight w [*in, *out] contracts the last `n_in` axes of x (cast to x.dtype, as the
mixed-precision policy says), accumulating in f32 and rounding the result to x.dtype; the
backward pass does the same (`matmul`, a custom VJP: autodiff of a bf16 -> bf16 dot would give
bf16 -> bf16 dots, which XLA:CPU upcasts to f32 with two extra passes, where bf16 x bf16 -> f32
runs natively on AVX512-BF16 at ~2x the f32 dot rate; on TPU both are the MXU's
f32-accumulating bf16 dot). An `Int4Weight` (the int4 view W[K, N] of the same leaf, see
gemini.model.spec) multiplies x[..., K] through the XLA reference (dequantise, one f32 dot —
what the C++ runtime computes) or the Pallas kernel, and is reshaped to `out`.
"""

from __future__ import annotations

import dataclasses
import functools
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
    return matmul(x, w, n_in)
  lead = x.shape[:x.ndim - n_in]
  x2 = x.reshape(-1, w.k)
  if impl == "xla":
    y = jnp.dot(x2.astype(jnp.float32), dequantize(w), preferred_element_type=jnp.float32)
  elif impl == "pallas":
    y = int4_ops.int4_matmul(x2, w)
  else:
    raise ValueError(f"dense: int4 impl={impl!r}: expected one of {IMPLS}")
  return y.reshape(*lead, *(out if out is not None else (w.n,))).astype(x.dtype)


def _dot_f32(a, b, contract_a, contract_b):
  return jax.lax.dot_general(a, b, ((contract_a, contract_b), ((), ())),
                             preferred_element_type=jnp.float32)


def _w_axes(w_ndim, n_in, w_in_last):
  """(contracted, kept) axes of w."""
  ax = tuple(range(w_ndim))
  return (ax[w_ndim - n_in:], ax[:w_ndim - n_in]) if w_in_last else (ax[:n_in], ax[n_in:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _matmul(x, w, n_in, out_dtype, w_in_last):
  nb = x.ndim - n_in
  w_c, _ = _w_axes(w.ndim, n_in, w_in_last)
  return _dot_f32(x, w.astype(x.dtype), tuple(range(nb, x.ndim)), w_c).astype(out_dtype)


def _matmul_fwd(x, w, n_in, out_dtype, w_in_last):
  # Residuals are the inputs themselves: under the layer scan the f32 weight is the scanned
  # slice, so no per-layer copy of its cast is stacked for the backward pass.
  return _matmul(x, w, n_in, out_dtype, w_in_last), (x, w)


def _matmul_bwd(n_in, out_dtype, w_in_last, res, g):
  del out_dtype
  x, w = res
  g = g.astype(x.dtype)
  nb = x.ndim - n_in
  _, w_kept = _w_axes(w.ndim, n_in, w_in_last)
  g_out = tuple(range(nb, g.ndim))
  dx = _dot_f32(g, w.astype(x.dtype), g_out, w_kept)                 # [*b, *in]
  batch = tuple(range(nb))
  dw = _dot_f32(g, x, batch, batch) if w_in_last else _dot_f32(x, g, batch, batch)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x: jax.Array, w: jax.Array, n_in: int = 1, *, out_dtype=None,
           w_in_last: bool = False) -> jax.Array:
  """x [*b, *in] times a float w [*in, *out] (w_in_last: w [*out, *in]) -> [*b, *out] in
  out_dtype (default x.dtype). w is cast to x.dtype and products accumulate in f32, forward
  and backward; the cotangent is cast to x.dtype before the backward dots (a bf16 model's
  gradients flow through bf16 x bf16 -> f32 dots) and dw comes back in w's dtype unrounded."""
  return _matmul(x, w, n_in, jnp.dtype(out_dtype or x.dtype), w_in_last)


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
