"""Shared test inputs and the comparison against the dense reference (test-only helper)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas.ring_attention import reference

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def inputs(b, s, h, kh, d, dtype, packed, seed=0):
  """q [B,S,H,Dh], k/v [B,S,K,Dh], cotangent do, and segment ids (packed: 3 docs + padding)."""
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (b, s, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (b, s, kh, d), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (b, s, kh, d), jnp.float32).astype(dtype)
  do = jax.random.normal(ks[3], (b, s, h, d), jnp.float32).astype(dtype)
  if not packed:
    return q, k, v, do, None
  # Document boundaries differ per batch row; the tail is padding (segment 0).
  seg = np.zeros((b, s), np.int32)
  for row in range(b):
    cuts = sorted({s // 5 + 3 * row, s // 2 + row, (4 * s) // 5})
    bounds = [0, *cuts, s - s // 9]
    for i in range(len(bounds) - 1):
      seg[row, bounds[i]:bounds[i + 1]] = i + 1
  return q, k, v, do, jnp.asarray(seg)


def media_ids(seg, b, s):
  """int32 [B,S] bidirectional item ids (0 = text) for segment ids seg [B,S] (None = one
  segment): two items per document, a third of it and an eighth of it long, at offsets that
  differ per row so they straddle block boundaries; ids unique within a row."""
  seg = np.ones((b, s), np.int32) if seg is None else np.asarray(seg)
  bid = np.zeros((b, s), np.int32)
  for row in range(b):
    item = 0
    for doc in sorted(set(seg[row].tolist()) - {0}):
      where = np.flatnonzero(seg[row] == doc)
      start, n = int(where[0]), len(where)
      for off, length in ((n // 5 + row, n // 3), ((3 * n) // 4, max(2, n // 8))):
        if off + length <= n:
          item += 1
          bid[row, start + off:start + off + length] = item
  return jnp.asarray(bid)


def value_and_grads(fn, q, k, v, do):
  """fn's output and d<sum(out * do)>/d(q, k, v), in one jit (one compilation per kernel)."""
  @jax.jit
  def run(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(do))
  return jax.block_until_ready(run(q, k, v, do))


def assert_close(got, want, dtype, seg=None, name=""):
  """Max error relative to max |want| (bf16) or absolute (f32), padding rows excluded."""
  got = np.asarray(got, np.float32)
  want = np.asarray(want, np.float32)
  tol = TOL[dtype]
  err = np.abs(got - want).max()
  scale = max(1.0, np.abs(want).max()) if dtype == jnp.bfloat16 else 1.0
  assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g}"


def check_against_reference(fn, b, s, h, kh, d, dtype, packed, causal, seed=0, media=False):
  """fn(q, k, v, seg, bid) vs the dense reference: output and the three gradients.

  media: pass bidirectional item ids from `media_ids` (else bid is None)."""
  q, k, v, do, seg = inputs(b, s, h, kh, d, dtype, packed, seed)
  bid = media_ids(seg, b, s) if media else None
  got = value_and_grads(lambda q, k, v: fn(q, k, v, seg, bid), q, k, v, do)
  ref = value_and_grads(lambda q, k, v: reference.attention(
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), seg, bid,
      causal=causal), q, k, v, do.astype(jnp.float32))
  for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
    assert g.shape == r.shape and g.dtype == dtype, (name, g.shape, g.dtype)
    assert np.all(np.isfinite(np.asarray(g, np.float32))), name
    assert_close(g, r, dtype, seg, name)
