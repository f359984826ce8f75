"""Test and tooling helpers for the model's packages: real TPU devices for ahead-of-time
compilation on a CPU machine (defined with the kernels, `pallas/testing/tpu_topology.py`)."""

from pallas.testing.tpu_topology import tpu_mesh, tpu_topology  # noqa: F401  (re-exported)

__all__ = ["tpu_mesh", "tpu_topology"]
