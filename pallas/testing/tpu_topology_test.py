"""The AOT topology helper gives real TPU devices and the TPU compiler reports memory."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas.testing import tpu_topology as testing


def test_v5e_2x2_has_four_tpu_devices():
  devices = testing.tpu_topology("v5e:2x2")
  assert len(devices) == 4 and all(d.platform == "tpu" for d in devices)


def test_sharded_matmul_compiles_for_tpu_with_memory_figures():
  mesh = testing.tpu_mesh("v5e:2x2", (4,), ("data",))
  x = jax.ShapeDtypeStruct((1024, 512), jnp.float32, sharding=NamedSharding(mesh, P("data")))
  compiled = jax.jit(lambda a: a @ a.T).trace(x).lower().compile()
  mem = compiled.memory_analysis()
  # Each device holds a quarter of x as its argument.
  assert mem.argument_size_in_bytes == 1024 * 512 * 4 // 4
  assert "tpu" in compiled.as_text().lower() or mem.generated_code_size_in_bytes > 0


def test_unknown_generation_is_named():
  with pytest.raises(ValueError, match="v9"):
    testing.tpu_topology("v9:2x2")


def test_mesh_shape_must_match_device_count():
  with pytest.raises(ValueError, match="needs 8 devices"):
    testing.tpu_mesh("v5e:2x2", (2, 4), ("data", "fsdp"))
