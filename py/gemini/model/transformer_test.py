"""Decoder tests: packing, the loss, mixed precision, remat, batch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config
from gemini.model import attention, norm, spec, transformer


def _small(name="nano_tiny", **kw):
  small = dict(dtype="float32", n_layers=2, vocab_size=256, d_model=64, d_ff=128, head_dim=16)
  return config.get_config(name).replace(**{**small, **kw})


def _text_batch(cfg, b=2, s=16, seed=1):
  toks = jax.random.randint(jax.random.key(seed), (b, s + 1), 0, cfg.vocab_size)
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:]}


def test_bf16_forward_close_to_f32():
  cfg = _small(dtype="bfloat16")
  params = transformer.init_params(cfg, jax.random.key(0))
  batch = _text_batch(cfg)
  lo16, _ = transformer.forward(params, batch, cfg)
  lo32, _ = transformer.forward(params, batch, cfg.replace(dtype="float32"))
  assert lo16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(lo16 - lo32))) < 0.25
  assert float(jnp.max(jnp.abs(lo16 - lo32))) > 0  # bf16 compute really happened


def test_packed_document_logits_equal_alone():
  cfg = _small()
  params = transformer.init_params(cfg, jax.random.key(0))
  toks = jax.random.randint(jax.random.key(3), (1, 24), 0, cfg.vocab_size)
  # Pack: doc A (10 tokens), doc B (9 tokens), 5 padding.
  seg = jnp.array([[1] * 10 + [2] * 9 + [0] * 5], jnp.int32)
  pos = jnp.array([list(range(10)) + list(range(9)) + [0] * 5], jnp.int32)
  packed, _ = transformer.forward(params, {"tokens": toks, "segment_ids": seg, "positions": pos}, cfg)
  alone_a, _ = transformer.forward(params, {"tokens": toks[:, :10]}, cfg)
  alone_b, _ = transformer.forward(params, {"tokens": toks[:, 10:19]}, cfg)
  np.testing.assert_allclose(packed[:, :10], alone_a, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[:, 10:19], alone_b, atol=1e-5, rtol=1e-5)
  # Without segment ids the second document does see the first (the test can fail).
  unpacked, _ = transformer.forward(params, {"tokens": toks, "positions": pos}, cfg)
  assert float(jnp.max(jnp.abs(unpacked[:, 10:19] - alone_b))) > 1e-3


def test_loss_ignores_padding_and_loss_mask():
  cfg = _small(n_layers=1)
  params = transformer.init_params(cfg, jax.random.key(0))
  b = _text_batch(cfg, b=1, s=8)
  seg = jnp.array([[1] * 6 + [0] * 2], jnp.int32)
  logits, _ = transformer.forward(params, b, cfg)
  logp = jax.nn.log_softmax(logits, -1)
  want = -np.mean(np.take_along_axis(np.asarray(logp), np.asarray(b["targets"])[..., None], -1)[0, :6, 0])
  loss, m = transformer.loss_fn(params, dict(b, segment_ids=seg), cfg)
  np.testing.assert_allclose(float(m["ce_loss"]), want, rtol=1e-5)
  assert float(m["num_tokens"]) == 6
  lm = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1]], jnp.float32)
  _, m2 = transformer.loss_fn(params, dict(b, segment_ids=seg, loss_mask=lm), cfg)
  assert float(m2["num_tokens"]) == 4


@pytest.mark.parametrize("name", ["flash_tiny"])      # dense + MoE block: both layer kinds
def test_every_remat_policy_and_unrolled_scan_give_the_same_grads(name):
  cfg = config.get_config(name).replace(dtype="float32", vocab_size=256, d_model=64, d_ff=128,
                                        head_dim=16, vision=config.VisionConfig(),
                                        audio=config.AudioConfig())
  params = transformer.init_params(cfg, jax.random.key(0))
  b = _text_batch(cfg, b=1, s=8)
  grad = lambda remat, unroll=False: jax.jit(jax.grad(
      lambda p: transformer.loss_fn(p, b, cfg, remat=remat, unroll=unroll)[0]))(params)
  want = jax.tree.leaves(grad("none"))
  for run in [grad(r) for r in transformer.REMAT_POLICIES if r != "none"] + [grad("none", True)]:
    for a, c in zip(jax.tree.leaves(run), want):
      np.testing.assert_allclose(a, c, atol=1e-6)
  with pytest.raises(ValueError, match="remat='sometimes'"):
    grad("sometimes")


def test_scanned_decoder_equals_layer_by_layer_reference():
  """The scan over stacked blocks runs decoder layer i with layer i's weights, in order."""
  cfg = config.get_config("flash_tiny").replace(dtype="float32", vocab_size=256, d_model=64,
                                                d_ff=128, head_dim=16,
                                                vision=config.VisionConfig(),
                                                audio=config.AudioConfig())
  params = transformer.init_params(cfg, jax.random.key(3))
  toks = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)
  want, _ = transformer.forward(params, {"tokens": toks}, cfg)
  seg = jnp.ones((2, 8), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  x = params["embed"]["tokens"][toks]
  attn = lambda p, h: (attention.attention_block(p, h, seg, pos, None, cfg), None)
  for i, layer in enumerate(spec.unstack_layers(params, cfg)):
    x, _, _ = transformer.decoder_layer(layer, x, attn, cfg, cfg.is_moe_layer(i))
  x = norm.rms_norm(params["final_norm"], x, cfg.norm_eps)
  np.testing.assert_allclose(x @ params["embed"]["tokens"].T, want, atol=1e-4)


def test_bad_batch_errors():
  cfg = _small()
  params = transformer.init_params(cfg, jax.random.key(0))
  b = _text_batch(cfg, b=1, s=8)
  with pytest.raises(ValueError, match="'segment_ids' has shape"):
    transformer.forward(params, dict(b, segment_ids=jnp.ones((1, 7), jnp.int32)), cfg)
  with pytest.raises(ValueError, match="no 'tokens'"):
    transformer.forward(params, {"targets": b["targets"]}, cfg)




def test_qk_norm_normalises_each_head_before_rope():
  """With qk_norm, q and k are RMS-normalised per head: scaling wq and wk changes nothing
  (without it, it changes the logits), and the norm scales receive gradient."""
  cfg = _small(qk_norm=True, n_kv_heads=2)
  params = transformer.init_params(cfg, jax.random.key(5))
  b = _text_batch(cfg, b=1, s=8)
  scaled = jax.tree.map(lambda a: a, params)
  attn = scaled["blocks"][0]["attn"]
  attn["wq"], attn["wk"] = attn["wq"] * 7.0, attn["wk"] * 0.2
  fwd = lambda p, c: transformer.forward(p, b, c)[0]
  np.testing.assert_allclose(fwd(scaled, cfg), fwd(params, cfg), atol=2e-4)
  plain = cfg.replace(qk_norm=False)
  strip = lambda p: jax.tree.map(lambda a: a, {**p, "blocks": [{**p["blocks"][0], "attn": {
      k: v for k, v in p["blocks"][0]["attn"].items() if k not in ("q_norm", "k_norm")}}]})
  assert np.abs(np.asarray(fwd(strip(scaled), plain) - fwd(strip(params), plain))).max() > 1e-2
  g = jax.grad(lambda p: transformer.loss_fn(p, b, cfg)[0])(params)
  assert float(jnp.abs(g["blocks"][0]["attn"]["q_norm"]["scale"]).max()) > 0
  assert float(jnp.abs(g["blocks"][0]["attn"]["k_norm"]["scale"]).max()) > 0


def test_bf16_residuals_as_bits_same_grads_and_integer_stacks():
  """The scan body's bf16 residuals are stacked as uint16 bits; values and grads are bitwise
  those of the plain body (also for integer inputs and outputs, which get no gradient)."""
  def body(x, xs):
    w, i = xs
    h = jnp.tanh(x.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16))
    y = (h @ w.T.astype(jnp.bfloat16)).astype(jnp.float32) * (1.0 + i.astype(jnp.float32))
    return y, (jnp.argmax(y, axis=-1).astype(jnp.int32), jnp.sum(h.astype(jnp.float32)))

  def loss(ws, x, f):
    y, (idx, s) = jax.lax.scan(f, x, (ws, jnp.arange(ws.shape[0], dtype=jnp.int32)))
    return jnp.sum(y ** 2) + jnp.sum(s) + 0.0 * jnp.sum(idx)

  ws = jax.random.normal(jax.random.key(0), (3, 16, 32)) * 0.2
  x = jax.random.normal(jax.random.key(1), (4, 16))
  packed = transformer.bf16_residuals_as_bits(body)
  want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(ws, x, body)
  got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(ws, x, packed)
  for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=2)(ws, x, packed))
  assert "u16[3,4,32]" in jaxpr and "bf16[3,4,32]" not in jaxpr
