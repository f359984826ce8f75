"""MoE under a data x expert mesh (8 fake CPU devices) equals the single-device layer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import sharding
from gemini.config import ModelConfig, MoEConfig
from gemini.model import moe, spec

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices: "
                                "XLA_FLAGS=--xla_force_host_platform_device_count=8")


def _cfg(dispatch):
  return ModelConfig(name="moe_mesh", vocab_size=32, d_model=16, n_layers=1, n_heads=2,
                     n_kv_heads=1, head_dim=8, d_ff=24, dtype="float32",
                     moe=MoEConfig(num_experts=4, top_k=2, d_ff=24, dispatch=dispatch,
                                   capacity_factor=1.0))


@pytest.mark.parametrize("dispatch,impl", [("capacity", "xla"), ("dropless", "xla"),
                                           ("dropless", "tiled")])
def test_moe_on_data_expert_mesh_equals_single_device(dispatch, impl):
  cfg = _cfg(dispatch)
  params = spec.init_layer(cfg, jax.random.PRNGKey(0), moe=True)["moe"]
  params["router"] = params["router"] * 50.0          # decisive routing, some drops
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 16), jnp.float32)

  def loss(p, x, mesh):
    y, m = moe.moe_mlp(p, x, cfg, impl=impl, mesh=mesh)
    return jnp.sum(y ** 2) + m["aux_loss"], (y, m["tokens_dropped"])

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  (l1, (y1, d1)), g1 = jax.jit(grad_fn, static_argnums=2)(params, x, None)
  mesh = sharding.make_mesh({"data": 2, "expert": 4})
  p_sh = jax.device_put(params, spec.shardings_of(spec.decoder_layer(cfg, True), mesh)["moe"])
  x_sh = jax.device_put(x, sharding.batch_sharding(mesh, x.shape))
  (l8, (y8, d8)), g8 = jax.jit(grad_fn, static_argnums=2)(p_sh, x_sh, mesh)
  assert p_sh["w_up"].sharding.spec[0] == "expert"
  np.testing.assert_allclose(np.asarray(y8), np.asarray(y1), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(l8), float(l1), rtol=1e-5)
  assert int(d8) == int(d1)
  for k in params:
    np.testing.assert_allclose(np.asarray(g8[k]), np.asarray(g1[k]), atol=1e-5, rtol=1e-4)


def test_pallas_tokens_follow_the_activation_layout():
  # x [B,S,D] is split batch over expert and seq over context: the Pallas path's shard_map
  # must take the flattened tokens in that order (then the replicated tensor axis).
  mesh = sharding.make_mesh({"tensor": 2, "context": 2, "expert": 2})
  assert moe._token_axes((4, 8), mesh) == ("expert", "context", "tensor")
  assert moe._token_axes((1, 8), mesh) == ("context", "tensor", "expert")


def test_pallas_on_expert_context_tensor_mesh_equals_single_device():
  cfg = _cfg("capacity")
  cfg = cfg.replace(moe=dataclasses.replace(cfg.moe, capacity_factor=4.0))
  params = spec.init_layer(cfg, jax.random.PRNGKey(0), moe=True)["moe"]
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 16), jnp.float32)
  want, _ = jax.jit(lambda p, x: moe.moe_mlp(p, x, cfg))(params, x)
  mesh = sharding.make_mesh({"tensor": 2, "context": 2, "expert": 2})
  p_sh = jax.device_put(params, spec.shardings_of(spec.decoder_layer(cfg, True), mesh)["moe"])
  x_sh = jax.device_put(x, sharding.batch_sharding(mesh, x.shape))
  got, m = jax.jit(lambda p, x: moe.moe_mlp(p, x, cfg, impl="pallas", mesh=mesh))(p_sh, x_sh)
  assert int(m["tokens_dropped"]) == 0              # capacity_factor = E: nothing dropped
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
