"""Real TPU devices for ahead-of-time compilation on a CPU machine (kernel tests, benches, the
trainer's TPU compiles).

With PyPI's `libtpu` installed, `jax.experimental.topologies.get_topology_desc` describes a
TPU slice without any TPU attached; `jax.jit(f).trace(*shape_dtype_structs).lower().compile()`
against a mesh of those devices runs the real TPU compiler (Mosaic for Pallas kernels, which
must sit inside `jax.shard_map`) and `compiled.memory_analysis()` reports HBM bytes.
"""

from __future__ import annotations

import functools
import os
from typing import List, Sequence

import jax
import numpy as np
from jax.experimental import topologies

# libtpu probes the host for TPU metadata at start-up and logs errors without these; and
# without ALLOW_MULTIPLE_LIBTPU_LOAD a second process (Bazel runs tests in parallel) fails on
# libtpu's /tmp lockfile even though nothing here touches a real chip.
_QUIET_ENV = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_SKIP_MDS_QUERY": "1",
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}

# Chip generation -> libtpu accelerator-type prefix for TPU_ACCELERATOR_TYPE.
_ACCELERATOR_PREFIX = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}


def _chips(topology: str) -> int:
  dims = topology.split(":", 1)[1].split("x")
  n = 1
  for d in dims:
    n *= int(d)
  return n


def _set_quiet_env(topology: str):
  gen = topology.split(":", 1)[0]
  if gen not in _ACCELERATOR_PREFIX:
    raise ValueError(f"unknown TPU generation {gen!r} in topology {topology!r}; "
                     f"known: {', '.join(_ACCELERATOR_PREFIX)}")
  # v4/v5p count cores (2 per chip) in accelerator type names; v5e/v6e count chips.
  per_chip = 2 if gen in ("v4", "v5p") else 1
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{_ACCELERATOR_PREFIX[gen]}-{_chips(topology) * per_chip}")
  for key, value in _QUIET_ENV.items():
    os.environ.setdefault(key, value)


@functools.lru_cache(maxsize=None)
def _topology(topology: str):
  _set_quiet_env(topology)
  return topologies.get_topology_desc(topology_name=topology, platform="tpu")


def tpu_topology(topology: str = "v5e:2x2") -> List:
  """Real TPU devices of `topology` ("v5e:2x2", "v5p:4x4x4", ...) for AOT compilation.

  Returns a list of jax devices (platform "tpu"). Nothing runs on them: use them to build a
  `jax.sharding.Mesh` and compile with `.lower().compile()`. Raises RuntimeError with the
  cause if libtpu is missing or the topology is not one libtpu knows.
  """
  _set_quiet_env(topology)  # Validates the generation name first.
  try:
    return list(_topology(topology).devices)
  except Exception as e:  # libtpu raises assorted types; name the topology either way.
    raise RuntimeError(f"cannot describe TPU topology {topology!r} (is libtpu installed?): {e}") from e


def tpu_mesh(topology: str, shape: Sequence[int], axis_names: Sequence[str]):
  """A Mesh over `tpu_topology(topology)` with the given shape and axis names (Auto axes)."""
  devices = tpu_topology(topology)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices; "
                     f"{topology} has {len(devices)}")
  return jax.sharding.Mesh(np.array(devices).reshape(shape), tuple(axis_names),
                           axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
