"""Logical axis names -> mesh axes: one rules table for every parameter and activation.

Every parameter dimension (named in gemini.model.spec) and every sharded activation dimension
carries a logical name;
`RULES` maps each name onto zero or more mesh axes of {data, fsdp, tensor, expert, context}.
A mesh axis is dropped for a dimension when the mesh does not have it, when it is already
used by another dimension of the same array, or when it does not divide the dimension
(e.g. MQA's single kv head is never split over `tensor`). So any mesh the flags give works.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert", "context")

# logical name -> mesh axes it may be split over (in order of preference).
RULES: Dict[str, Tuple[str, ...]] = {
    # activations
    "batch": ("data", "fsdp", "expert"),
    "seq": ("context",),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    # parameters
    "vocab": ("tensor",),
    # Weights (and so AdamW state) also shard over `context`, FSDP-style as in MaxText:
    # with ring attention the sequence is split over `context`, and without this every
    # context group would hold a full replica of the non-expert weights.
    "embed": ("fsdp", "context"),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "experts": ("expert",),
    "expert_mlp": ("tensor",),
    "norm": (),
    # The stacking axis of scanned layers: every device holds its slice of every layer.
    "layers": (),
}

def make_mesh(axes: Dict[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Mesh from {"data": 2, "fsdp": 4, ...} (Auto axis types) over `devices` (default all)."""
  for name, size in axes.items():
    if name not in MESH_AXES:
      raise ValueError(f"mesh axis {name!r} (in {axes}) is not one of {MESH_AXES}")
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"mesh axis {name!r} has size {size!r}; expected a positive int")
  devices = list(jax.devices() if devices is None else devices)
  n = math.prod(axes.values())
  if n != len(devices):
    raise ValueError(f"mesh {axes} needs {n} devices, got {len(devices)}")
  names = tuple(axes)
  return jax.make_mesh(tuple(axes.values()), names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def logical_to_spec(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules: Dict[str, Tuple[str, ...]] = RULES) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dims have the `logical` names."""
  if len(logical) != len(shape):
    raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
  used = set()
  spec = []
  for name, dim in zip(logical, shape):
    if name is not None and name not in rules:
      raise ValueError(f"unknown logical axis {name!r}; known: {sorted(rules)}")
    chosen = []
    for ax in rules.get(name, ()) if name else ():
      size = mesh.shape.get(ax, 1)
      if ax in used or ax not in mesh.shape or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
        chosen.append(ax)
        used.add(ax)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return PartitionSpec(*spec)


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Sharding of a [B,S,...] batch array: batch over data/fsdp/expert, seq over context."""
  logical = ("batch", "seq") + (None,) * (len(shape) - 2)
  return NamedSharding(mesh, logical_to_spec(logical[:len(shape)], shape, mesh))


def kernel_interpret(mesh: Optional[Mesh]):
  """`interpret` for Pallas kernels run on `mesh`: False (real Mosaic kernels) when its
  devices are TPUs, else None (the kernels' own default: interpret off TPU). The default
  backend alone is wrong for ahead-of-time compiles of TPU topologies from a CPU host."""
  if mesh is not None and mesh.devices.flat[0].platform == "tpu":
    return False
  return None


def constrain(x: jax.Array, logical: Sequence[Optional[str]], mesh: Optional[Mesh]) -> jax.Array:
  """with_sharding_constraint by logical names; identity when mesh is None."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh)))
