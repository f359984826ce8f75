"""`int4_matmul(x, w)`: pads ragged shapes, picks tiles and calls the Pallas kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas.int4_matmul.weight import Int4Weight
from pallas.int4_matmul import kernel


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def choose_tiles(m: int, n: int, kh: int, group: int):
  """(tm, tn, tk) for x [m, .] and a weight with n columns and Kh = Kp/2 packed rows.

  tk divides Kh with tk/G a multiple of 8 (f32 scale tiles), or tk = Kh (one K step)."""
  tm = min(256, _round_up(m, 8))
  tn = 256 if n >= 256 else 128
  tk = kh
  for cand in (1024, 512, 256):
    if kh > cand and kh % cand == 0 and (cand // group) % 8 == 0:
      tk = cand
      break
  return tm, tn, tk


def int4_matmul(x: jax.Array, w: Int4Weight, *, interpret: bool | None = None,
                tiles=None) -> jax.Array:
  """x [M, K] (f32 or bf16; the MXU dtype) @ W_int4 [K, N] -> f32 [M, N].

  interpret: None = interpret mode unless running on TPU. tiles: optional (tm, tn, tk)."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  m, k = x.shape
  if k != w.k:
    raise ValueError(f"int4_matmul: x has K={k}, weight has K={w.k}")
  kp, n, g = w.k_padded, w.n, w.group_size
  kh = kp // 2
  tm, tn, tk = tiles or choose_tiles(m, n, kh, g)
  mp, np_ = _round_up(m, tm), _round_up(n, tn)
  dt = jnp.bfloat16 if x.dtype == jnp.bfloat16 else jnp.float32
  xp = jnp.pad(x.astype(dt), ((0, mp - m), (0, kp - k)))
  x2 = xp.reshape(mp, 2, kh).transpose(1, 0, 2)                      # [2, Mp, Kh]
  packed = jnp.pad(w.packed, ((0, 0), (0, np_ - n)), constant_values=0x88)  # zero weights
  scales2 = jnp.pad(w.scales.astype(jnp.float32), ((0, 0), (0, np_ - n))).reshape(2, kh // g, np_)
  out = kernel.int4_matmul_padded(x2, packed, scales2, group=g, tm=tm, tn=tn, tk=tk,
                                  interpret=interpret)
  return out[:m, :n]
