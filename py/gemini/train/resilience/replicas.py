"""In-memory redundancy: a copy of the train state on peer devices, refreshed every K steps.

The Gemini 1.0 report lifted goodput from 85% to 97% by recovering from redundant in-memory
copies of the model state instead of from persistent storage. Here the copy of every array
shard lives on a *peer* device: the mesh's device list rotated by `shift` places. The
default shift is one slice (the devices of one index of the mesh's leading axis), so each
slice's state is mirrored on another slice and losing a whole slice loses no data.

Recovery reads only surviving devices: every shard is taken from the replica or from the
surviving primary arrays on a device not in `lost_devices`, assembled in host memory (no
disk), and placed with the requested (possibly new-mesh) shardings. Single-controller only:
in a multi-process run each process sees only its own shards.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding


class RecoveryError(RuntimeError):
  """Some shard had no surviving copy."""


def slice_size(mesh: Mesh) -> int:
  """Devices per slice: one index of the mesh's leading axis."""
  return mesh.devices.size // mesh.devices.shape[0]


def peer_sharding(sharding, shift: int):
  """`sharding` with every device replaced by the one `shift` places later (cyclically)."""
  if isinstance(sharding, NamedSharding):
    devs = sharding.mesh.devices
    rolled = np.roll(devs.reshape(-1), -shift).reshape(devs.shape)
    return NamedSharding(Mesh(rolled, sharding.mesh.axis_names,
                              axis_types=sharding.mesh.axis_types), sharding.spec)
  if isinstance(sharding, SingleDeviceSharding):
    devices = jax.devices()
    (dev,) = sharding.device_set
    return SingleDeviceSharding(devices[(devices.index(dev) + shift) % len(devices)])
  raise TypeError(f"peer_sharding: unsupported sharding {type(sharding).__name__}")


def _norm_index(index, shape) -> tuple:
  return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


class InMemoryReplica:
  """Keeps (step, state copy on peer devices, JSON extras) for disk-free recovery."""

  def __init__(self, shift: Optional[int] = None):
    self.shift = shift
    self.step: Optional[int] = None
    self.extra: Dict[str, Any] = {}
    self._copy = None

  @property
  def available(self) -> bool:
    return self._copy is not None

  def _shift_for(self, state) -> int:
    if self.shift is not None:
      return self.shift
    for leaf in jax.tree.leaves(state):
      if isinstance(leaf.sharding, NamedSharding):
        return slice_size(leaf.sharding.mesh) % len(jax.devices())
    return 0

  def refresh(self, state: Any, step: int, extra: Dict[str, Any]) -> None:
    """Copies `state` (pytree of jax arrays) onto peer devices; `extra` (loader state, ...)
    is deep-copied on the host."""
    shift = self._shift_for(state)
    self._copy = jax.tree.map(
        lambda x: jax.device_put(x, peer_sharding(x.sharding, shift), may_alias=False), state)
    jax.block_until_ready(self._copy)
    self.step = step
    self.extra = copy.deepcopy(extra)

  def replica_devices(self) -> set:
    """Device ids holding any part of the copy."""
    return {d.id for leaf in jax.tree.leaves(self._copy) for d in leaf.sharding.device_set}

  def recover(self, shardings: Any, lost_devices: Iterable[int] = (), primary: Any = None) -> Any:
    """The replicated state placed with `shardings` (pytree matching the state), read only
    from devices not in `lost_devices` (ids); surviving `primary` shards may fill gaps."""
    if self._copy is None:
      raise RecoveryError("no in-memory replica has been taken yet")
    lost = set(lost_devices)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(self._copy)
    prim = treedef.flatten_up_to(primary) if primary is not None else [None] * len(leaves)
    targets = treedef.flatten_up_to(shardings)
    out = []
    for (path, rep), pri, target in zip(leaves, prim, targets):
      pieces = {}
      for arr in (rep, pri):
        if arr is None:
          continue
        for shard in arr.addressable_shards:
          if shard.device.id not in lost:
            pieces.setdefault(_norm_index(shard.index, arr.shape), shard)
      needed = {_norm_index(i, rep.shape)
                for i in rep.sharding.devices_indices_map(rep.shape).values()}
      missing = needed - set(pieces)
      if missing:
        raise RecoveryError(f"state leaf {jax.tree_util.keystr(path)}: shards {sorted(missing)} "
                            f"have no copy outside lost devices {sorted(lost)}")
      host = np.empty(rep.shape, rep.dtype)
      for idx, shard in pieces.items():
        host[tuple(slice(a, b) for a, b in idx)] = np.asarray(shard.data)
      out.append(jax.device_put(host, target))
    return jax.tree_util.tree_unflatten(treedef, out)
