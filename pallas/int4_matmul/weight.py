"""Group-wise symmetric int4 weight quantisation, packing and exact unpacking.

A matrix W[K, N] (K = input dim, N = output dim) is cut into groups of `group_size`
consecutive input rows; each group of each output column gets one scale
s = absmax / 7 (stored as f16 or bf16) and values q = round(W / s) in [-7, 7].
Every element then satisfies |W - q*s| <= s/2.

JAX packing (what `Int4Weight.packed` holds and the Pallas kernel reads): K is padded with
zero rows to Kp, a multiple of 2*group_size, and the two halves of the padded rows share a
byte: packed[i, n] = (q[i, n] + 8) | (q[i + Kp/2, n] + 8) << 4. A K-tile of the kernel then
unpacks into two contiguous row blocks (no interleaving inside the kernel). The .gnb file
uses its own row-major layout (py/gemini/export/FORMAT.md); the exporter converts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

QMAX = 7          # Symmetric range [-7, 7]: zero is exact and both signs reach absmax.
OFFSET = 8        # Nibbles hold q + 8 in [1, 15].
GROUP_SIZES = (32, 64, 128)
SCALE_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Int4Weight:
  """An int4 matrix for x[..., K] @ W[K, N].

  packed: uint8 [Kp // 2, N]; scales: f16|bf16 [Kp // group_size, N];
  k: the real input size K <= Kp; group_size: rows per scale.
  """
  packed: jax.Array
  scales: jax.Array
  k: int
  group_size: int

  @property
  def n(self) -> int:
    return self.packed.shape[-1]

  @property
  def k_padded(self) -> int:
    return 2 * self.packed.shape[-2]


jax.tree_util.register_dataclass(Int4Weight, data_fields=["packed", "scales"],
                                 meta_fields=["k", "group_size"])


def padded_k(k: int, group_size: int) -> int:
  """K rounded up to a multiple of 2 * group_size (both packed halves hold whole groups)."""
  m = 2 * group_size
  return -(-k // m) * m


def _check_group(group_size: int, scale_dtype: str):
  if group_size not in GROUP_SIZES:
    raise ValueError(f"group_size={group_size} not in {GROUP_SIZES}")
  if scale_dtype not in SCALE_DTYPES:
    raise ValueError(f"scale_dtype={scale_dtype!r} not in {tuple(SCALE_DTYPES)}")


def group_scales(w: jax.Array, group_size: int, scale_dtype: str = "float16") -> jax.Array:
  """Per-group scales of w[K, N] (K a multiple of group_size) -> [K/group_size, N] scale_dtype.

  The stored scale is rounded up (by one ulp when rounding went down) so that
  absmax / scale <= 7 and no value is clipped: this keeps |W - q*s| <= s/2 exact.
  """
  _check_group(group_size, scale_dtype)
  k, n = w.shape
  absmax = jnp.max(jnp.abs(w.astype(jnp.float32)).reshape(k // group_size, group_size, n), axis=1)
  sd = SCALE_DTYPES[scale_dtype]
  s = (absmax / QMAX).astype(sd)
  s = jnp.where(s.astype(jnp.float32) * QMAX < absmax, jnp.nextafter(s, jnp.array(jnp.inf, sd)), s)
  return s


def quantize_values(w: jax.Array, scales: jax.Array, group_size: int) -> jax.Array:
  """int8 q[K, N] in [-7, 7] for w[K, N] f32 and scales [K/group_size, N]."""
  s = jnp.repeat(scales.astype(jnp.float32), group_size, axis=0)
  q = jnp.where(s > 0, jnp.round(w.astype(jnp.float32) / jnp.where(s > 0, s, 1.0)), 0.0)
  return jnp.clip(q, -QMAX, QMAX).astype(jnp.int8)


def pack(q: jax.Array) -> jax.Array:
  """int8 q[Kp, N] in [-8, 7] (Kp even) -> uint8 [Kp/2, N]: low nibble row i, high row i+Kp/2."""
  half = q.shape[0] // 2
  u = (q.astype(jnp.int32) + OFFSET).astype(jnp.uint8)
  return u[:half] | (u[half:] << 4)


def unpack(packed: jax.Array) -> jax.Array:
  """uint8 [Kp/2, N] -> int8 q[Kp, N]: the exact inverse of `pack`."""
  lo = (packed & 0xF).astype(jnp.int8) - OFFSET
  hi = (packed >> 4).astype(jnp.int8) - OFFSET
  return jnp.concatenate([lo, hi], axis=0)


def quantize(w: jax.Array, group_size: int = 32, scale_dtype: str = "float16") -> Int4Weight:
  """w[K, N] float -> Int4Weight (K zero-padded to a multiple of 2*group_size)."""
  _check_group(group_size, scale_dtype)
  if w.ndim != 2:
    raise ValueError(f"quantize expects a matrix [K, N], got shape {w.shape}")
  k = w.shape[0]
  w = jnp.pad(jnp.asarray(w, jnp.float32), ((0, padded_k(k, group_size) - k), (0, 0)))
  scales = group_scales(w, group_size, scale_dtype)
  q = quantize_values(w, scales, group_size)
  return Int4Weight(pack(q), scales, k, group_size)


def dequantize(qw: Int4Weight) -> jax.Array:
  """Int4Weight -> f32 [K, N] (padding rows dropped)."""
  q = unpack(qw.packed).astype(jnp.float32)
  s = jnp.repeat(qw.scales.astype(jnp.float32), qw.group_size, axis=0)
  return (q * s)[:qw.k]


def int4_values(qw: Int4Weight) -> np.ndarray:
  """Host copy of the int8 values q[K, N] (padding rows dropped), for exporters and tests."""
  return np.asarray(unpack(qw.packed))[:qw.k]
