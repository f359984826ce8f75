"""Every preset: tiny ones train (finite loss and grads, loss ~ ln V at init); full-size ones
build exactly the family table's parameter count (jax.eval_shape, no memory)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config, family
from gemini.model import spec, transformer


def _f32(name):
  return config.get_config(name).replace(dtype="float32")


def _text_batch(cfg, b=2, s=16, seed=1):
  toks = jax.random.randint(jax.random.key(seed), (b, s + 1), 0, cfg.vocab_size)
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:]}


@pytest.mark.parametrize("name", config.TINY)
def test_tiny_forward_grad_and_init_loss(name):
  cfg = _f32(name)
  params = transformer.init_params(cfg, jax.random.key(0))
  batch = _text_batch(cfg)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: transformer.loss_fn(p, batch, cfg), has_aux=True))(params)
  assert np.isfinite(float(loss))
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))
  # Every parameter in the decoder receives gradient signal (nothing disconnected).
  for path, g in jax.tree_util.tree_leaves_with_path(
      {k: v for k, v in grads.items() if k not in ("vision", "audio")}):
    assert float(jnp.max(jnp.abs(g))) > 0, jax.tree_util.keystr(path)
  assert abs(float(metrics["ce_loss"]) / math.log(cfg.vocab_size) - 1) < 0.10
  assert metrics["expert_load"].shape == (cfg.num_moe_layers, max(cfg.moe.num_experts, 1))
  if cfg.moe.enabled:
    np.testing.assert_allclose(np.sum(metrics["expert_load"], -1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", config.FULL_SIZE + ("smollm2_135m",))
def test_init_builds_the_stacked_tree_of_the_spec(name):
  cfg = config.get_config(name)
  shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == family.total_params(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  spec.check_tree(shapes, cfg)
  p = len(spec.block_pattern(cfg))
  assert len(shapes["blocks"]) == p and cfg.n_layers % p == 0
  r = cfg.n_layers // p
  layer0 = shapes["blocks"][0]
  assert layer0["attn"]["wq"].shape == (r, cfg.d_model, cfg.n_heads, cfg.head_dim)
  assert layer0["attn"]["wk"].shape == (r, cfg.d_model, cfg.n_kv_heads, cfg.head_dim)
  assert layer0["attn"]["wo"].shape == (r, cfg.n_heads, cfg.head_dim, cfg.d_model)


def test_block_pattern_of_interleaved_layers():
  base = config.get_config("nano_tiny").replace(n_layers=6)
  moe = lambda layers: base.replace(moe=config.MoEConfig(num_experts=2, top_k=1, d_ff=8,
                                                         layers=layers))
  assert spec.block_pattern(base) == (False,)
  assert spec.block_pattern(moe(())) == (True,)
  assert spec.block_pattern(moe((1, 3, 5))) == (False, True)
  assert spec.block_pattern(moe((2, 5))) == (False, False, True)
  assert spec.block_pattern(moe((0,))) == (True,) + (False,) * 5   # no period: one block
