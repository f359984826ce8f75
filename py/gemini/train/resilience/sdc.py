"""Silent-data-corruption detection by deterministic replay on a different device assignment.

The Gemini reports isolate faulty chips with deterministic replay and (2.5) "split-phase"
checks. Our check step is split in two phases:
  1. every device computes the gradient of its own batch shard (replicated params,
     shard_map over a 1-D mesh of all devices), and a uint32 checksum of each device's
     gradient is taken (bit patterns summed mod 2^32, so any single bit flip changes it);
  2. only if the checks agree are the per-shard gradients averaged and applied.
The same computation is replayed with the device order rotated by `shift`, so logical
shard i runs on device A[i] in the primary pass and on B[i] = A[i+shift] in the replay.
A faulty device corrupts one shard in each pass; the devices common to every mismatching
shard's pair {A[i], B[i]} are named as faulty, and the update is not applied.

Pure functions are bit-reproducible on the same program and inputs, so healthy passes
agree exactly. A fault hook `inject(stacked_grads) -> stacked_grads` (used by tests to
flip a bit in one physical device's buffer) runs after phase 1 of both passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gemini.train.step import LossFn


@dataclasses.dataclass
class SDCResult:
  ok: bool
  step: int
  mismatched_shards: List[int]
  faulty_devices: List[int]          # Device ids; empty when ok.
  grads: Any = None                  # Mean gradient (only when ok).
  metrics: Optional[Dict[str, Any]] = None


def checksums(stacked: Any) -> jax.Array:
  """uint32 [n]: per-row checksum of a pytree of [n, ...] arrays (row = one device)."""
  total = None
  for leaf in jax.tree.leaves(stacked):
    x = leaf.astype(jnp.float32) if leaf.dtype != jnp.float32 else leaf
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(x.shape[0], -1)
    s = jnp.sum(bits, axis=1, dtype=jnp.uint32)
    total = s if total is None else total + s
  return total


class SDCChecker:
  """Split-phase replay check over `devices` (default: all devices)."""

  def __init__(self, loss_fn: LossFn, devices: Optional[Sequence] = None, shift: int = 1):
    self.loss_fn = loss_fn
    self.devices = list(devices if devices is not None else jax.devices())
    if len(self.devices) > 1 and shift % len(self.devices) == 0:
      raise ValueError(f"SDCChecker: shift={shift} maps every device to itself")
    self.shift = shift
    self._fns = {}

  def _per_device_grads(self, order: Sequence, params, batch, rng):
    mesh = Mesh(np.asarray(order), ("r",))

    def local(p, b, key):
      (loss, metrics), g = jax.value_and_grad(self.loss_fn, has_aux=True)(p, b, key)
      expand = lambda x: jnp.asarray(x)[None]
      return jax.tree.map(expand, g), jax.tree.map(expand, dict(metrics, loss=loss))

    key = tuple(d.id for d in order)
    if key not in self._fns:
      self._fns[key] = jax.jit(jax.shard_map(
          local, mesh=mesh, in_specs=(P(), P("r"), P()), out_specs=(P("r"), P("r")),
          check_vma=False))
    rep = NamedSharding(mesh, P())
    row = NamedSharding(mesh, P("r"))
    params = jax.device_put(params, rep)
    batch = jax.tree.map(lambda x: jax.device_put(x, row), batch)
    return self._fns[key](params, batch, jax.device_put(rng, rep))

  def check(self, step: int, params: Any, batch: Dict[str, Any], rng: jax.Array,
            inject: Optional[Callable[[Any], Any]] = None) -> SDCResult:
    """Runs both passes on `batch` (global [B, S] arrays, B divisible by #devices)."""
    n = len(self.devices)
    order_a = self.devices
    order_b = [self.devices[(i + self.shift) % n] for i in range(n)]
    sums, results = [], []
    for order in (order_a, order_b):
      grads, metrics = self._per_device_grads(order, params, batch, rng)
      if inject is not None:
        grads = inject(grads)
      sums.append(np.asarray(jax.device_get(checksums(grads))))
      results.append((grads, metrics))
    mismatched = [i for i in range(n) if sums[0][i] != sums[1][i]]
    if mismatched:
      suspects = set.intersection(*({order_a[i].id, order_b[i].id} for i in mismatched))
      if not suspects:
        suspects = {d.id for i in mismatched for d in (order_a[i], order_b[i])}
      return SDCResult(False, step, mismatched, sorted(suspects))
    grads, metrics = results[0]
    mean = lambda x: jnp.mean(x, axis=0)
    return SDCResult(True, step, [], [], jax.tree.map(mean, grads), jax.tree.map(mean, metrics))
