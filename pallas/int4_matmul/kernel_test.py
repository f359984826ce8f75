"""The Pallas int4 matmul equals the pure-JAX reference (interpret mode, ragged shapes), and
compiles with the real TPU compiler (v5e 2x2, inside shard_map)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas.int4_matmul import ops, reference, weight
from pallas.testing import tpu_topology


@pytest.mark.parametrize("m,k,n,group,scale_dtype", [
    (5, 100, 37, 32, "float16"),     # everything ragged
    (1, 576, 130, 64, "bfloat16"),   # decode-shaped, SmolLM2's width
    (13, 200, 256, 128, "float16"),  # K pads to 256 with group 128
    (9, 1100, 20, 32, "bfloat16"),   # K pads to 1152: one K step over Kh = 576
])
def test_kernel_matches_reference(m, k, n, group, scale_dtype):
  rng = np.random.default_rng(m * k + n)
  w = weight.quantize(jnp.asarray(rng.standard_normal((k, n)), jnp.float32), group, scale_dtype)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  want = np.asarray(reference.int4_matmul(x, w))
  got = np.asarray(ops.int4_matmul(x, w, interpret=True))
  assert got.shape == (m, n)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_several_k_steps_accumulate():
  rng = np.random.default_rng(0)
  k, n, m = 2048, 128, 8
  w = weight.quantize(jnp.asarray(rng.standard_normal((k, n)), jnp.float32), 32)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  tm, tn, tk = ops.choose_tiles(m, n, w.k_padded // 2, 32)
  assert w.k_padded // 2 // tk == 2  # two reduction steps really run
  np.testing.assert_allclose(np.asarray(ops.int4_matmul(x, w, interpret=True)),
                             np.asarray(reference.int4_matmul(x, w)), rtol=1e-4, atol=1e-3)


def test_bf16_activations_close_to_reference():
  rng = np.random.default_rng(1)
  w = weight.quantize(jnp.asarray(rng.standard_normal((96, 40)), jnp.float32), 32)
  x = jnp.asarray(rng.standard_normal((4, 96)), jnp.bfloat16)
  want = np.asarray(reference.int4_matmul(x, w))
  got = np.asarray(ops.int4_matmul(x, w, interpret=True))
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 2e-2  # bf16 MXU inputs


def test_compiles_for_tpu_v5e_inside_shard_map():
  devices = tpu_topology.tpu_topology("v5e:2x2")  # sets ALLOW_MULTIPLE_LIBTPU_LOAD
  mesh = jax.sharding.Mesh(np.asarray(devices).reshape(4), ("model",))
  m, k, n, g = 16, 2048, 4 * 512, 32
  w = jax.eval_shape(lambda: weight.quantize(jnp.zeros((k, n)), g, "bfloat16"))

  def local(x, packed, scales):  # column-parallel: each chip holds N/4 columns
    return ops.int4_matmul(x, weight.Int4Weight(packed, scales, k, g), interpret=False)

  f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, "model"), P(None, "model")),
                    out_specs=P(None, "model"), check_vma=False)
  args = (jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=NamedSharding(mesh, P())),
          jax.ShapeDtypeStruct(w.packed.shape, jnp.uint8, sharding=NamedSharding(mesh, P(None, "model"))),
          jax.ShapeDtypeStruct(w.scales.shape, jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "model"))))
  compiled = jax.jit(f).trace(*args).lower().compile()
  text = compiled.as_text()
  assert "tpu_custom_call" in text or "custom-call" in text
  mem = compiled.memory_analysis()
  # Per chip: a quarter of the int4 weights (0.5 byte each) plus their scales.
  assert mem.argument_size_in_bytes >= k * n // 4 // 2
