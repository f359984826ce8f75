"""This machine's matmul peak, measured once at start-up, the denominator of MFU.

We time `jnp.dot` of two n x n f32 matrices on one device (XLA's CPU matmul uses every
core, and fake multi-device meshes share the same cores, so this is the whole machine's
peak); that is the MFU denominator. `dtype=bfloat16, accumulate=float32` times the
bf16 x bf16 -> f32 form instead, which XLA:CPU runs natively on AVX512-BF16 (a bf16 -> bf16
dot is upcast to f32 first and is not faster than f32).
"""

from __future__ import annotations

import time
from typing import List

import jax
import jax.numpy as jnp


def matmul_rates(n: int = 1024, reps: int = 5, dtype=jnp.float32, accumulate=None,
                 calls: int = 1) -> List[float]:
  """FLOP/s of an n x n @ n x n `jnp.dot` (2 n^3 FLOPs per call) of `dtype` inputs,
  accumulated in and returning `accumulate` (default: dtype): `reps` samples, each timing
  `calls` dots issued back to back (one wait at the end)."""
  device = jax.local_devices()[0]
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(k1, (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(k2, (n, n), dtype), device)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=accumulate))
  dot(a, b).block_until_ready()  # Compile and warm up.
  rates = []
  for _ in range(reps):
    t0 = time.perf_counter()
    outs = [dot(a, b) for _ in range(calls)]
    jax.block_until_ready(outs)
    rates.append(calls * 2.0 * n ** 3 / (time.perf_counter() - t0))
  return rates


def measure_matmul_peak(n: int = 1024, reps: int = 5, dtype=jnp.float32,
                        accumulate=None) -> float:
  """Best observed FLOP/s of an n x n @ n x n `jnp.dot` of `dtype` inputs, accumulated in
  and returning `accumulate` (default: dtype); one dot per sample."""
  return max(matmul_rates(n, reps, dtype, accumulate))
