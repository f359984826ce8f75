"""Slice elasticity: continue on the surviving slices when some are lost.

A slice is one index of the mesh's leading axis (e.g. `data` in data=2,fsdp=4: two slices
of 4 devices). When devices fail, every slice containing a failed device is dropped (the
2.5 report's slice granularity) and the mesh is rebuilt from the remaining slices with the
same axis names; the state is then resharded onto it from the in-memory replica
(`InMemoryReplica.recover`), and training continues with the same global batch, so the loss
curve continues as before at reduced throughput.
"""

from __future__ import annotations

from typing import Iterable, List

import numpy as np
from jax.sharding import Mesh


def slice_devices(mesh: Mesh, index: int) -> List[int]:
  """Device ids of slice `index` of `mesh`."""
  if not 0 <= index < mesh.devices.shape[0]:
    raise ValueError(f"slice {index} out of range: mesh has {mesh.devices.shape[0]} slices "
                     f"along {mesh.axis_names[0]!r}")
  return [d.id for d in mesh.devices[index].reshape(-1)]


def surviving_mesh(mesh: Mesh, lost_devices: Iterable[int]) -> Mesh:
  """`mesh` without every slice that contains a device in `lost_devices`."""
  lost = set(lost_devices)
  keep = [i for i in range(mesh.devices.shape[0])
          if not lost & {d.id for d in mesh.devices[i].reshape(-1)}]
  if not keep:
    raise ValueError(f"no slice of the mesh survives the loss of devices {sorted(lost)}")
  return Mesh(np.asarray(mesh.devices)[keep], mesh.axis_names, axis_types=mesh.axis_types)
