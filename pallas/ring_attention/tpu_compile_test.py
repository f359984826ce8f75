"""Every kernel compiled by the real TPU compiler (Mosaic via libtpu) for a v5e:2x2 topology.

Interpret mode checks numerics; this checks the kernels are real TPU kernels: tiling, VMEM
use, DMA and semaphore lowering, collective ids. Nothing runs. Memory numbers are printed
(pytest -s) and checked against the dense XLA attention at the same size.
"""

import jax.numpy as jnp
import pytest

from pallas.testing import tpu_topology
from pallas.ring_attention import aot

SHAPE = dict(seq=4096, heads=4, kv_heads=1, head_dim=128, dtype=jnp.bfloat16)


@pytest.fixture(scope="module")
def mesh():
  return tpu_topology.tpu_mesh("v5e:2x2", (4,), ("context",))


@pytest.fixture(scope="module")
def dense_temp(mesh):
  return aot.memory(aot.compile_attention("dense", mesh, batch=1, **SHAPE))["temp"]


def test_flash_forward_backward_compiles(mesh):
  mem = aot.memory(aot.compile_attention("flash", mesh, batch=4, **SHAPE))
  print("flash fwd+bwd v5e:2x2 per device:", mem)
  assert mem["temp"] > 0


@pytest.mark.parametrize("kind", ["ring_dma", "ring_ppermute"])
def test_ring_forward_backward_compiles_and_beats_dense_memory(mesh, dense_temp, kind):
  mem = aot.memory(aot.compile_attention(kind, mesh, batch=1, **SHAPE))
  print(f"{kind} fwd+bwd v5e:2x2 per device:", mem, "dense temp:", dense_temp)
  # Dense attention holds [H, S/4, S] f32 scores per device (4*1024*4096*4 = 64 MiB and
  # more for the backward); the ring holds O(S/4) activations only.
  assert 0 < mem["temp"] < dense_temp / 4


def test_block_breaking_tpu_tiling_is_rejected(mesh):
  # Key segment ids travel as [1, block_k] lane vectors: block_k=64 of a 1024-token shard
  # violates the 128-lane tiling, which interpret mode would accept and Mosaic must not.
  with pytest.raises(Exception):
    aot.compile_attention("flash", mesh, batch=4, block_q=64, block_k=64, backward=False,
                          **SHAPE)
