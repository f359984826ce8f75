"""Ahead-of-time compilation of the attention ops for TPU topologies (used by tests and bench).

Everything here only traces, lowers and compiles: nothing runs. The Pallas kernels must sit
inside `jax.shard_map` to be compiled by Mosaic for TPU devices, so even the single-device
flash op is wrapped in a shard_map that splits the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas.ring_attention import ops, reference


def _loss_and_grads(attn):
  """f(q, k, v) -> (sum of out, dq, dk, dv): forward and backward of `attn` in one program."""
  def f(q, k, v):
    out, vjp = jax.vjp(attn, q, k, v)
    return (jnp.sum(out.astype(jnp.float32)), *vjp(jnp.ones_like(out)))
  return f


def compile_attention(kind: str, mesh, *, batch: int, seq: int, heads: int, kv_heads: int,
                      head_dim: int, dtype=jnp.bfloat16, axis_name: str = "context",
                      block_q: int = 128, block_k: int = 128, backward: bool = True):
  """Compiled forward(+backward) of one attention layer on `mesh`.

  kind: "flash" (batch split over every mesh axis, one flash kernel per device), "ring_dma",
  "ring_ppermute" (sequence over `axis_name`), or "dense" (the XLA reference with the sequence
  sharded over `axis_name`: what GSPMD makes of plain attention). Returns the jax Compiled.
  """
  seg = jnp.ones((batch, seq), jnp.int32)
  if kind == "flash":
    axes = tuple(mesh.axis_names)
    def inner(q, k, v):
      return ops.flash_attention(q, k, v, causal=True, block_q=block_q, block_k=block_k,
                                 interpret=False)
    attn = jax.shard_map(inner, mesh=mesh, in_specs=(P(axes),) * 3, out_specs=P(axes),
                         check_vma=False)
    spec = P(axes)
  elif kind in ("ring_dma", "ring_ppermute"):
    impl = kind.split("_")[1]
    attn = functools.partial(_ring, mesh=mesh, axis_name=axis_name, impl=impl, seg=seg,
                             block_q=block_q, block_k=block_k)
    spec = P(None, axis_name)
  elif kind == "dense":
    attn = lambda q, k, v: reference.attention(q, k, v, seg, causal=True)
    spec = P(None, axis_name)
  else:
    raise ValueError(f"compile_attention: kind={kind!r}")
  fn = _loss_and_grads(attn) if backward else attn
  shard = NamedSharding(mesh, spec)
  args = [jax.ShapeDtypeStruct((batch, seq, h, head_dim), dtype, sharding=shard)
          for h in (heads, kv_heads, kv_heads)]
  # Outputs keep the inputs' sharding: unpinned, jit may replicate dq/dk/dv on every device.
  out_shardings = (NamedSharding(mesh, P()), shard, shard, shard) if backward else shard
  return jax.jit(fn, out_shardings=out_shardings).trace(*args).lower().compile()


def _ring(q, k, v, *, mesh, axis_name, impl, seg, block_q, block_k):
  return ops.ring_attention(q, k, v, seg, mesh=mesh, axis_name=axis_name, impl=impl,
                            block_q=block_q, block_k=block_k, interpret=False)


def memory(compiled) -> dict:
  """Per-device bytes from `memory_analysis()`: temp, argument, output, total (= their sum)."""
  m = compiled.memory_analysis()
  out = {"temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes,
         "output": m.output_size_in_bytes}
  out["total"] = out["temp"] + out["argument"] + out["output"]
  return out
