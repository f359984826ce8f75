"""Logical axis names -> mesh axes: one rules table for every parameter and activation.

Every parameter dimension and every sharded activation dimension carries a logical name;
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
}

# (leaf name, ndim) -> logical axes. Paths not listed (small encoder extras) are replicated.
PARAM_AXES: Dict[Tuple[str, int], Tuple[Optional[str], ...]] = {
    ("tokens", 2): ("vocab", "embed"),
    ("unembed", 2): ("embed", "vocab"),
    ("scale", 1): ("norm",),
    ("wq", 3): ("embed", "heads", "head_dim"),
    ("wk", 3): ("embed", "kv_heads", "head_dim"),
    ("wv", 3): ("embed", "kv_heads", "head_dim"),
    ("wo", 3): ("heads", "head_dim", "embed"),
    ("w_gate", 2): ("embed", "mlp"),
    ("w_up", 2): ("embed", "mlp"),
    ("w_down", 2): ("mlp", "embed"),
    ("w_gate", 3): ("experts", "embed", "expert_mlp"),
    ("w_up", 3): ("experts", "embed", "expert_mlp"),
    ("w_down", 3): ("experts", "expert_mlp", "embed"),
    ("router", 2): ("embed", None),
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


def _leaf_name(path) -> str:
  for entry in reversed(path):
    if isinstance(entry, jax.tree_util.DictKey):
      return str(entry.key)
  return ""


def _axes_for(path, leaf) -> Tuple[Optional[str], ...]:
  return PARAM_AXES.get((_leaf_name(path), len(leaf.shape)), (None,) * len(leaf.shape))


def param_axes(params):
  """Structure like `params` with a logical-axis tuple per array (None = replicated dim).
  Tuples are pytree nodes: map over it with is_leaf=lambda x: isinstance(x, tuple)."""
  return jax.tree_util.tree_map_with_path(_axes_for, params)


def param_specs(params, mesh: Mesh):
  """Pytree of PartitionSpecs for `params` (arrays or ShapeDtypeStructs) on `mesh`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: logical_to_spec(_axes_for(path, leaf), leaf.shape, mesh), params)


def param_shardings(params, mesh: Mesh):
  """Pytree of NamedShardings for `params` on `mesh`."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh),
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


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
