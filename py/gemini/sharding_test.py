"""Sharded forward+grad on 8 fake CPU devices equals the single-device result (f32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gemini import config, sharding
from gemini.model import spec, transformer
from gemini import testing

MESHES = [
    ("nano_tiny", {"data": 8}),
    ("nano_tiny", {"fsdp": 4, "tensor": 2}),
    ("pro_tiny", {"data": 2, "expert": 4}),
    ("nano_tiny", {"fsdp": 2, "tensor": 2, "context": 2}),
]


def _text_cfg(name):
  # The decoder's sharding is under test; encoders are exercised by the multimodal tests.
  return config.get_config(name).replace(dtype="float32", n_layers=1,
                                         vision=config.VisionConfig(), audio=config.AudioConfig())


def _batch(cfg, b=8, s=16):
  toks = jax.random.randint(jax.random.key(1), (b, s + 1), 0, cfg.vocab_size)
  seg = jnp.ones((b, s), jnp.int32).at[:, s - 3:].set(0)
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "segment_ids": seg}


def _loss_and_grad(params, batch, cfg, mesh):
  return jax.value_and_grad(lambda p: transformer.loss_fn(p, batch, cfg, mesh=mesh)[0])(params)


@pytest.mark.parametrize("name,axes", MESHES)
def test_sharded_forward_grad_equals_single_device(name, axes):
  assert jax.device_count() == 8, "run with 8 fake devices (pytest_test devices=8)"
  cfg = _text_cfg(name)
  params = transformer.init_params(cfg, jax.random.key(0))
  batch = _batch(cfg)
  want_loss, want_grads = jax.jit(_loss_and_grad, static_argnames=("cfg", "mesh"))(
      params, batch, cfg=cfg, mesh=None)

  mesh = sharding.make_mesh(axes)
  p_shard = spec.shardings(cfg, mesh)
  b_shard = {k: sharding.batch_sharding(mesh, v.shape) for k, v in batch.items()}
  params_s = jax.device_put(params, p_shard)
  batch_s = jax.device_put(batch, b_shard)
  fn = jax.jit(_loss_and_grad, static_argnames=("cfg", "mesh"), out_shardings=(None, p_shard))
  loss, grads = fn(params_s, batch_s, cfg=cfg, mesh=mesh)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
  # The arrays really were split across the mesh (not silently replicated).
  sharded = [x for x in jax.tree.leaves(params_s) if not x.sharding.is_fully_replicated]
  assert bool(sharded) == (set(axes) != {"data"})  # pure data parallel replicates params
  assert not batch_s["tokens"].sharding.is_fully_replicated


def test_specs_follow_rules_and_drop_non_dividing_axes():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  cfg = config.get_config("nano_tiny")  # MQA: one kv head cannot be split over tensor.
  specs = spec.partition_specs(cfg, mesh)
  assert specs["embed"]["tokens"] == P("tensor", "fsdp")
  # Stacked layers: the leading 'layers' axis is never split.
  assert specs["blocks"][0]["attn"]["wq"] == P(None, "fsdp", "tensor", None)
  assert specs["blocks"][0]["attn"]["wk"] == P(None, "fsdp", None, None)
  assert specs["blocks"][0]["mlp"]["w_down"] == P(None, "tensor", "fsdp")
  assert specs["final_norm"]["scale"] == P(None)
  emesh = sharding.make_mesh({"data": 2, "expert": 4})
  assert (spec.partition_specs(_text_cfg("pro_tiny"), emesh)["blocks"][0]["moe"]["w_up"]
          == P(None, "expert", None, None))
  assert sharding.logical_to_spec(("batch", "seq"), (6, 16), emesh) == P("data", None)
  assert sharding.logical_to_spec(("batch", "seq"), (8, 16), emesh) == P(("data", "expert"), None)


def test_weights_shard_over_context_while_the_sequence_does():
  # Ring attention's mesh: parameters FSDP over fsdp x context, experts over expert, and the
  # batch's sequence over context on the same chips.
  mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "context": 2})
  specs = spec.partition_specs(_text_cfg("pro_tiny"), mesh)
  assert specs["blocks"][0]["attn"]["wq"] == P(None, ("fsdp", "context"), None, None)
  assert specs["blocks"][0]["moe"]["w_up"] == P(None, "expert", ("fsdp", "context"), None)
  assert specs["embed"]["tokens"] == P(None, ("fsdp", "context"))
  assert sharding.batch_sharding(mesh, (4, 16)).spec == P(("fsdp", "expert"), "context")


def test_bad_mesh_is_a_clear_error():
  with pytest.raises(ValueError, match="'model'"):
    sharding.make_mesh({"model": 8})
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh({"data": 6})


def test_spec_names_the_axes_of_every_decoder_matrix():
  cfg = _text_cfg("pro_tiny")
  shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  axes = spec.logical_axes(cfg)
  flat = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(flat) == len(jax.tree.leaves(shapes))
  for (path, leaf), ax in zip(jax.tree_util.tree_leaves_with_path(shapes), flat):
    assert len(ax) == leaf.ndim, jax.tree_util.keystr(path)
    if leaf.ndim >= 3 and "router" not in jax.tree_util.keystr(path):
      assert all(a is not None for a in ax[:2]), jax.tree_util.keystr(path)
  assert axes["blocks"][0]["moe"]["w_down"] == ("layers", "experts", "expert_mlp", "embed")


def test_kernels_are_real_tpu_kernels_on_tpu_meshes_only():
  # AOT compiles for a TPU topology run on a CPU host: the mesh, not the backend, decides.
  assert sharding.kernel_interpret(None) is None
  assert sharding.kernel_interpret(sharding.make_mesh({"data": 8})) is None
  tpu = sharding.make_mesh({"fsdp": 4}, testing.tpu_topology("v5e:2x2"))
  assert sharding.kernel_interpret(tpu) is False
