"""Multimodal batches through the full decoder (transformer.loss_fn / forward): forward and
backward run, gradients reach every encoder, media are bidirectional within an item and causal
across the sequence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import get_config
from gemini.model import multimodal, transformer


def _example(cfg, seed=0, frames=4):
  rng = np.random.default_rng(seed)
  v = cfg.vision
  image = rng.uniform(size=(v.image_size, v.image_size, v.channels)).astype(np.float32)
  t = np.arange(cfg.audio.sample_rate) / cfg.audio.sample_rate          # a 1-second clip
  clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
  vid = rng.uniform(size=(frames, v.image_size, v.image_size, v.channels)).astype(np.float32)
  return [("text", [5, 6, 7]), ("image", image), ("text", [8, 9]), ("audio", clip),
          ("text", [10]), ("video", vid), ("text", [11, 12, 13])]


# flash_tiny has both layer kinds (dense and MoE); the all-MoE pro_tiny gets the same checks
# on its multimodal batch in multimodal_kernels_test (test_xla_reference_trains_every_part).
@pytest.mark.parametrize("name", ["flash_tiny"])
def test_full_model_forward_backward(name):
  cfg = get_config(name).replace(dtype="float32")
  params = jax.jit(functools.partial(transformer.init_params, cfg))(jax.random.PRNGKey(0))
  ex = _example(cfg)
  seq_len = multimodal.sequence_length(ex, cfg)
  batch = multimodal.build_batch([ex], cfg, seq_len)
  jbatch = jax.tree_util.tree_map(jnp.asarray, batch)

  def loss_and_logits(p, b):
    logits, metrics = transformer.forward(p, b, cfg)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, b["targets"][..., None], axis=-1)[..., 0]
    ce = jnp.sum(nll * b["loss_mask"]) / jnp.sum(b["loss_mask"])
    moe_loss = cfg.moe.aux_loss_weight * metrics["aux_loss"] + cfg.moe.z_loss_weight * metrics["z_loss"]
    return ce + moe_loss, logits

  step = jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True))   # one compile for all calls
  (loss, base), grads = step(params, jbatch)
  assert abs(float(loss) - np.log(cfg.vocab_size)) < 0.1 * np.log(cfg.vocab_size), float(loss)
  for part in ("vision", "audio", "blocks", "embed"):
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads[part])]
    assert all(np.all(np.isfinite(g)) for g in leaves), part
    assert any(np.any(g != 0) for g in leaves), part


@pytest.mark.parametrize("name", ["flash_tiny"])
def test_media_bidirectional_within_item_causal_across(name):
  cfg = get_config(name).replace(dtype="float32")
  params = jax.jit(functools.partial(transformer.init_params, cfg))(jax.random.PRNGKey(0))
  # Make the ViT blocks identities (zero residual branches) so each image token depends on its
  # own patch only: any effect of a later patch on an earlier image token must then come from
  # the decoder's bidirectional attention inside the item.
  layers = params["vision"]["layers"]            # stacked over the ViT's blocks
  layers["attn"]["wo"] = jnp.zeros_like(layers["attn"]["wo"])
  layers["mlp"]["w_down"] = jnp.zeros_like(layers["mlp"]["w_down"])
  batch = jax.tree_util.tree_map(jnp.asarray,
                                 multimodal.build_batch([_example(cfg)], cfg, 66))
  fwd = jax.jit(lambda p, b: (transformer.forward(p, b, cfg)[0],
                              multimodal.embed_sequence(p, b, cfg)[0]))
  changed = dict(batch)        # bottom half of the image = its last 8 of 16 tokens (4x4 grid)
  changed["images"] = batch["images"].at[:, cfg.vision.image_size // 2:].add(1.0)
  (l0, x0), (l1, x1) = fwd(params, batch), fwd(params, changed)
  dx = np.abs(np.asarray(x0 - x1)[0]).max(-1)
  dl = np.abs(np.asarray(l0 - l1)[0]).max(-1)
  assert dx[3:11].max() == 0.0 and dx[11:19].min() > 0  # encoder: top-half tokens untouched
  assert dl[:3].max() == 0.0        # text before the image cannot see it
  assert dl[3] > 1e-4               # the image's first token sees its later tokens (bidir)
  assert dl[19] > 1e-4              # text after the image sees it
  # A later item never leaks into an earlier one: change the audio clip only.
  changed = dict(batch, audio=batch["audio"] * 0.5)
  dl = np.abs(np.asarray(fwd(params, changed)[0] - l0)[0]).max(-1)
  assert dl[:21].max() == 0.0 and dl[21] > 1e-4
