"""Pallas kernel: x[m, k] @ W_int4[k, n], dequantising each weight tile in the kernel.

Operands as `ops.int4_matmul` lays them out (see weight.py for the packing):
  x       [2, Mp, Kh]        x's two K halves (Kh = Kp/2), compute dtype
  packed  uint8 [Kh, Np]     low nibble: row i of the first half, high: row i of the second
  scales  f32 [2, Kh/G, Np]  per-group scales of each half
Grid (Mp/tm, Np/tn, Kh/tk); the K axis is the reduction ("arbitrary"), accumulated in an f32
VMEM scratch. Each step unpacks a [tk, tn] byte tile into two signed int4 tiles, scales them
by their groups' scales broadcast over the G rows of each group, and runs two MXU dots.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def _kernel(x_lo_ref, x_hi_ref, p_ref, s_lo_ref, s_hi_ref, o_ref, acc_ref, *, group: int):
  kk = pl.program_id(2)

  @pl.when(kk == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  p = p_ref[...].astype(jnp.int32)
  tk, tn = p.shape
  lo = ((p & 0xF) - 8).astype(jnp.float32)
  hi = ((p >> 4) - 8).astype(jnp.float32)

  def expand(s):  # [tk/G, tn] -> [tk, tn]: each group's scale over its G rows
    return jnp.broadcast_to(s[:, None, :], (tk // group, group, tn)).reshape(tk, tn)

  x_lo, x_hi = x_lo_ref[...], x_hi_ref[...]
  dt = x_lo.dtype
  w_lo = (lo * expand(s_lo_ref[...])).astype(dt)
  w_hi = (hi * expand(s_hi_ref[...])).astype(dt)
  acc_ref[...] += (jnp.dot(x_lo, w_lo, preferred_element_type=jnp.float32)
                   + jnp.dot(x_hi, w_hi, preferred_element_type=jnp.float32))

  @pl.when(kk == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = acc_ref[...]


@functools.partial(jax.jit, static_argnames=("group", "tm", "tn", "tk", "interpret"))
def int4_matmul_padded(x2: jax.Array, packed: jax.Array, scales2: jax.Array, *, group: int,
                       tm: int, tn: int, tk: int, interpret=False) -> jax.Array:
  """x2 [2, Mp, Kh], packed uint8 [Kh, Np], scales2 f32 [2, Kh/G, Np] -> f32 [Mp, Np].

  Requires Mp % tm == Np % tn == Kh % tk == tk % group == 0."""
  _, mp, kh = x2.shape
  np_ = packed.shape[1]
  nk = kh // tk
  gk = tk // group
  in_specs = [
      pl.BlockSpec((None, tm, tk), lambda i, j, k: (0, i, k)),
      pl.BlockSpec((None, tm, tk), lambda i, j, k: (1, i, k)),
      pl.BlockSpec((tk, tn), lambda i, j, k: (k, j)),
      pl.BlockSpec((None, gk, tn), lambda i, j, k: (0, k, j)),
      pl.BlockSpec((None, gk, tn), lambda i, j, k: (1, k, j)),
  ]
  return pl.pallas_call(
      functools.partial(_kernel, group=group),
      grid=(mp // tm, np_ // tn, nk),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((tm, tn), lambda i, j, k: (i, j)),
      out_shape=jax.ShapeDtypeStruct((mp, np_), jnp.float32),
      scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(x2, x2, packed, scales2, scales2)
