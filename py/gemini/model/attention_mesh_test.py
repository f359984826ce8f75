"""impl="flash" under a mesh (the kernel runs per shard via shard_map) equals impl="xla".

Run with 8 host devices (BUILD: devices=8).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import sharding
from gemini.model import attention


@pytest.mark.parametrize("axes,kv_heads", [({"data": 2, "tensor": 2, "fsdp": 2}, 2),
                                           ({"fsdp": 4, "tensor": 2}, 1)])
def test_flash_impl_on_mesh_equals_xla(axes, kv_heads):
  mesh = sharding.make_mesh(axes)
  ks = jax.random.split(jax.random.key(0), 3)
  b, s, h, dh = 8, 24, 4, 16
  q = jax.random.normal(ks[0], (b, s, h, dh))
  k = jax.random.normal(ks[1], (b, s, kv_heads, dh))
  v = jax.random.normal(ks[2], (b, s, kv_heads, dh))
  seg = jnp.ones((b, s), jnp.int32).at[:, 10:].set(2).at[:, 20:].set(0)
  pos = jnp.where(jnp.arange(s) < 10, jnp.arange(s), jnp.arange(s) - 10)[None].repeat(b, 0)
  bid = jnp.zeros((b, s), jnp.int32).at[:, 3:7].set(1).at[:, 12:17].set(2)  # media items
  want = attention.attention(q, k, v, seg, pos, bid)
  got = jax.jit(lambda q, k, v: attention.attention(q, k, v, seg, pos, bid, impl="flash",
                                                    mesh=mesh))(q, k, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)  # padding rows: 0
