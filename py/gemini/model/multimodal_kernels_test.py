"""A multimodal pro_tiny batch trains with attn_impl='flash' and 'ring' exactly as with 'xla'.

Run with 8 host devices (BUILD: devices=8). The batch holds images, audio and video, so the
bidirectional item ids are nonzero and the Pallas kernels (interpret mode) must apply the
media part of the mask; the ring runs on a data=2 x context=4 mesh. Each impl takes the same
three SGD steps from the same initialisation: the losses of every step and the first step's
gradients must match the XLA reference path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import get_config
from gemini.model import multimodal, transformer

_STEPS = 3
_LR = 0.05


def _cfg():
  # f32 compute: the test compares the math, not where each path rounds to bf16.
  return get_config("pro_tiny").replace(dtype="float32")


def _examples(cfg):
  rng = np.random.default_rng(0)
  v = cfg.vision
  img = lambda: rng.uniform(size=(v.image_size, v.image_size, v.channels)).astype(np.float32)
  vid = lambda: rng.uniform(size=(2, v.image_size, v.image_size, v.channels)).astype(np.float32)
  clip = lambda: (0.1 * rng.standard_normal(cfg.audio.sample_rate // 4)).astype(np.float32)
  text = lambda n: rng.integers(1, cfg.vocab_size, n).tolist()
  return [[("text", text(5)), ("image", img()), ("text", text(7)), ("audio", clip()),
           ("text", text(3)), ("video", vid()), ("text", text(6))],
          [("text", text(2)), ("video", vid()), ("text", text(9)), ("image", img()),
           ("text", text(4)), ("audio", clip()), ("text", text(11))]]


@functools.lru_cache(maxsize=None)
def _setup():
  cfg = _cfg()
  examples = _examples(cfg)
  seq_len = max(multimodal.sequence_length(ex, cfg) for ex in examples) + 3  # + padding
  batch = jax.tree_util.tree_map(jnp.asarray, multimodal.build_batch(examples, cfg, seq_len))
  params = jax.jit(functools.partial(transformer.init_params, cfg))(jax.random.key(0))
  return cfg, batch, params


def _train(impl, mesh):
  """Losses of _STEPS SGD steps and the first step's gradients."""
  cfg, batch, params = _setup()

  @jax.jit
  def step(p):
    loss, grads = jax.value_and_grad(
        lambda p: transformer.loss_fn(p, batch, cfg, attn_impl=impl, mesh=mesh)[0])(p)
    return loss, grads, jax.tree.map(lambda w, g: w - _LR * g, p, grads)

  losses, first_grads = [], None
  for _ in range(_STEPS):
    loss, grads, params = jax.block_until_ready(step(params))
    losses.append(float(loss))
    first_grads = grads if first_grads is None else first_grads
  return np.asarray(losses), first_grads


def _mesh(shape, names):
  n = int(np.prod(shape))
  if len(jax.devices()) < n:
    pytest.fail(f"needs {n} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=jax.devices()[:n])


@functools.lru_cache(maxsize=None)
def _reference():
  return _train("xla", None)


def test_batch_has_media_items():
  cfg, batch, params = _setup()
  bidir = np.asarray(jax.jit(lambda p, b: multimodal.embed_sequence(p, b, cfg)[1])(params, batch))
  # Three items per row (image, audio, video), each with its own nonzero id.
  assert [len(set(row.tolist()) - {0}) for row in bidir] == [3, 3]


def test_xla_reference_trains_every_part():
  """The reference itself: initial loss near log(vocab), gradients finite and reaching every
  encoder, the decoder blocks and the embeddings."""
  cfg = _setup()[0]
  losses, grads = _reference()
  assert abs(losses[0] - np.log(cfg.vocab_size)) < 0.1 * np.log(cfg.vocab_size), losses
  for part in ("vision", "audio", "blocks", "embed"):
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads[part])]
    assert all(np.all(np.isfinite(g)) for g in leaves), part
    assert any(np.any(g != 0) for g in leaves), part


@pytest.mark.parametrize("impl,shape,names", [
    ("flash", None, None),
    ("ring", (2, 4), ("data", "context")),
])
def test_kernel_impl_trains_like_xla(impl, shape, names):
  mesh = _mesh(shape, names) if shape else None
  losses, grads = _train(impl, mesh)
  ref_losses, ref_grads = _reference()
  assert np.all(np.diff(ref_losses) < 0), ref_losses      # the steps really train
  flat = jax.tree_util.tree_leaves_with_path(grads)
  flat_ref = jax.tree.leaves(ref_grads)
  worst = max(float(np.abs(np.asarray(g) - np.asarray(r)).max() / max(1.0, np.abs(r).max()))
              for (_, g), r in zip(flat, flat_ref))
  print(f"{impl}: losses {losses} vs xla {ref_losses}; worst gradient error {worst:.2e}")
  assert len(flat) == len(flat_ref)
  for (path, g), r in zip(flat, flat_ref):
    g, r = np.asarray(g), np.asarray(r)
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    np.testing.assert_allclose(g, r, atol=5e-5 * max(1.0, float(np.abs(r).max())),
                               err_msg=jax.tree_util.keystr(path))
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
