"""Reference ring (lax.ppermute between flash kernel calls, or between XLA blocks) on 1, 2, 4
and 8 fake CPU devices.

Run with 8 host devices (BUILD: devices=8). Forward and the three gradients against the dense
reference, with the zigzag layout handled inside the op (inputs in natural order), with and
without bidirectional media items.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas.ring_attention import layout, ops, reference, testutil


def _mesh(shape, names):
  n = int(np.prod(shape))
  if len(jax.devices()) < n:
    pytest.fail(f"needs {n} devices, have {len(jax.devices())} (set XLA_FLAGS="
                "--xla_force_host_platform_device_count=8)")
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=jax.devices()[:n])


# (mesh shape, names, batch_axes, B, S, H, K, causal, packed, media, dtype)
CASES = [
    ((1,), ("context",), (), 1, 40, 4, 2, True, True, False, jnp.float32),
    ((2,), ("context",), (), 1, 64, 2, 1, False, False, False, jnp.float32),
    ((2, 4), ("data", "context"), ("data",), 2, 100, 4, 2, True, True, True, jnp.bfloat16),
    ((8,), ("context",), (), 1, 128, 2, 1, True, True, True, jnp.float32),
]


@pytest.mark.parametrize("blocks", ops.BLOCKS)
@pytest.mark.parametrize("shape,names,batch_axes,b,s,h,kh,causal,packed,media,dtype", CASES)
def test_ppermute_ring_matches_reference(shape, names, batch_axes, b, s, h, kh, causal, packed,
                                         media, dtype, blocks):
  mesh = _mesh(shape, names)
  fn = lambda q, k, v, seg, bid: ops.ring_attention(
      q, k, v, seg, bid, mesh=mesh, causal=causal, impl="ppermute", block_q=16, block_k=16,
      interpret=True, batch_axes=batch_axes, blocks=blocks)
  testutil.check_against_reference(fn, b, s, h, kh, 32, dtype, packed, causal, media=media)


@pytest.mark.parametrize("name", ["contiguous", "striped"])
def test_other_layouts_give_the_same_answer(name):
  mesh = _mesh((4,), ("context",))
  q, k, v, _, seg = testutil.inputs(1, 64, 2, 1, 16, jnp.float32, packed=True)
  bid = testutil.media_ids(seg, 1, 64)
  out = jax.jit(lambda q, k, v: ops.ring_attention(
      q, k, v, seg, bid, mesh=mesh, layout=name, block_q=16, block_k=16, interpret=True))(q, k, v)
  np.testing.assert_allclose(out, reference.attention(q, k, v, seg, bid), atol=2e-5)


def test_bad_arguments_are_named():
  mesh = _mesh((2,), ("context",))
  q = jnp.zeros((1, 16, 2, 8))
  with pytest.raises(ValueError, match="impl='nccl'"):
    ops.ring_attention(q, q, q, mesh=mesh, impl="nccl")
  with pytest.raises(ValueError, match="no 'seq'"):
    ops.ring_attention(q, q, q, mesh=mesh, axis_name="seq")
  with pytest.raises(ValueError, match="blocks='xla' with impl='dma'"):
    ops.ring_attention(q, q, q, mesh=mesh, impl="dma", blocks="xla")


@pytest.mark.parametrize("n", [2, 4, 8])
def test_in_shard_map_zigzag_exchange_matches_layout_permutation(n):
  # Positions travel with the data, so a wrong exchange would still give right answers (but
  # unbalanced work): check the device-local exchange against layout.permutation directly.
  mesh = _mesh((n,), ("context",))
  s = 4 * n
  x = jnp.arange(s, dtype=jnp.int32)[None]
  spec = jax.sharding.PartitionSpec(None, "context")
  enter = jax.shard_map(lambda x: ops._zigzag_enter(x, "context", n), mesh=mesh,
                        in_specs=spec, out_specs=spec, check_vma=False)
  leave = jax.shard_map(lambda x: ops._zigzag_leave(x, "context", n), mesh=mesh,
                        in_specs=spec, out_specs=spec, check_vma=False)
  zig = jax.jit(enter)(x)
  np.testing.assert_array_equal(zig[0], layout.permutation(s, n, "zigzag"))
  np.testing.assert_array_equal(jax.jit(leave)(zig), x)
