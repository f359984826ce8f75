"""The model with attention impl='ring' (and 'ring_xla') on a context=4 mesh equals impl='xla'
on one device.

Run with 8 host devices (BUILD: devices=8). Loss and every parameter gradient of a 2-layer
nano_tiny on a packed batch (two documents and padding).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config as config_lib
from gemini.model import transformer


@pytest.mark.parametrize("ring", ["ring", "ring_xla"])
def test_model_ring_equals_xla_forward_and_backward(ring):
  # f32 compute: the test compares the math, not where each path rounds to bf16.
  cfg = config_lib.PRESETS["nano_tiny"].replace(n_layers=2, max_seq_len=64, vocab_size=512,
                                                d_model=64, d_ff=128, n_heads=4, head_dim=16,
                                                dtype="float32")
  s = 60   # Not a multiple of the ring's 2n chunks: the op pads.
  params = transformer.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, s), 0, cfg.vocab_size, jnp.int32)
  seg = jnp.asarray([[1] * 25 + [2] * 30 + [0] * 5], jnp.int32)
  pos = jnp.asarray([list(range(25)) + list(range(30)) + [0] * 5], jnp.int32)
  batch = {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1), "segment_ids": seg,
           "positions": pos}
  mesh = jax.make_mesh((4,), ("context",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])

  def loss_and_grads(impl, mesh):
    fn = lambda p: transformer.loss_fn(p, batch, cfg, attn_impl=impl, mesh=mesh)[0]
    return jax.block_until_ready(jax.jit(jax.value_and_grad(fn))(params))

  ring_loss, ring_grads = loss_and_grads(ring, mesh)
  xla_loss, xla_grads = loss_and_grads("xla", None)
  np.testing.assert_allclose(ring_loss, xla_loss, rtol=1e-5)
  flat_ring = jax.tree_util.tree_leaves_with_path(ring_grads)
  flat_xla = jax.tree.leaves(xla_grads)
  assert len(flat_ring) == len(flat_xla)
  for (path, g), r in zip(flat_ring, flat_xla):
    assert np.all(np.isfinite(g)), path
    np.testing.assert_allclose(g, r, atol=2e-5 * max(1.0, float(np.abs(r).max())),
                               err_msg=jax.tree_util.keystr(path))
