"""Cached decoding equals the full forward; sampling filters behave as specified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config, family
from gemini.model import decode, transformer
from gemini.model import multimodal


def _cfg(name="nano_tiny", **kw):
  # Small widths: cache/forward agreement does not depend on size, compile time does not either.
  small = dict(n_layers=2, vocab_size=512, d_model=64, d_ff=128, head_dim=16)
  return config.get_config(name).replace(dtype="float32", **{**small, **kw})


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_cached_decode_32_steps_equals_full_forward(kv_heads):
  cfg = _cfg(n_kv_heads=kv_heads, logit_softcap=30.0)
  params = transformer.init_params(cfg, jax.random.key(0))
  b, p, n = 2, 8, 32
  toks = jax.random.randint(jax.random.key(5), (b, p + n), 0, cfg.vocab_size)
  full, _ = transformer.forward(params, {"tokens": toks}, cfg)
  cache = decode.init_cache(cfg, b, p + n)
  assert cache["k"].shape == (cfg.n_layers, b, p + n, kv_heads, cfg.head_dim)
  logits, cache = jax.jit(decode.prefill, static_argnames="cfg")(
      params, {"tokens": toks[:, :p]}, cache, cfg=cfg)
  np.testing.assert_allclose(logits, full[:, :p], atol=1e-4)
  step = jax.jit(decode.decode_step, static_argnames="cfg")
  for i in range(n):
    logits, cache = step(params, toks[:, p + i], cache, cfg=cfg)
    np.testing.assert_allclose(logits, full[:, p + i], atol=1e-4, err_msg=f"step {i}")
  np.testing.assert_array_equal(cache["index"], [p + n] * b)


def test_generate_greedy_matches_argmax_rollout_and_left_padding():
  cfg = _cfg()
  params = transformer.init_params(cfg, jax.random.key(1))
  prompt = jax.random.randint(jax.random.key(2), (1, 5), 0, cfg.vocab_size)
  out = decode.generate(params, prompt, cfg, 6)
  # Independent rollout: argmax of the full forward on the growing sequence (one fixed length;
  # causality makes the not-yet-generated zeros irrelevant to position t's logits).
  fwd = jax.jit(lambda t: transformer.forward(params, {"tokens": t}, cfg)[0])
  seq = jnp.concatenate([prompt, jnp.zeros((1, 6), prompt.dtype)], 1)
  for t in range(5, 11):
    seq = seq.at[:, t].set(jnp.argmax(fwd(seq)[:, t - 1], -1).astype(seq.dtype))
  np.testing.assert_array_equal(out, seq[:, 5:])
  # The same prompt left-padded next to a longer one generates the same tokens.
  other = jax.random.randint(jax.random.key(3), (1, 7), 0, cfg.vocab_size)
  padded = jnp.concatenate([jnp.concatenate([jnp.zeros((1, 2), prompt.dtype), prompt], 1), other])
  seg = jnp.array([[0, 0] + [1] * 5, [1] * 7], jnp.int32)
  out2 = decode.generate(params, padded, cfg, 6, prompt_segment_ids=seg)
  np.testing.assert_array_equal(out2[0], out[0])


def test_generate_stops_at_eos():
  cfg = _cfg()
  params = transformer.init_params(cfg, jax.random.key(1))
  prompt = jax.random.randint(jax.random.key(2), (1, 5), 0, cfg.vocab_size)
  free = decode.generate(params, prompt, cfg, 4)
  eos = int(free[0, 1])
  out = decode.generate(params, prompt, cfg, 4, eos_id=eos)
  assert out.shape == (1, 4)
  np.testing.assert_array_equal(out[0, :2], free[0, :2])
  assert np.all(np.asarray(out[0, 1:]) == eos)


def test_sampling_filters():
  key = jax.random.key(0)
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
  greedy = decode.sample(logits, None)
  assert np.all(np.asarray(greedy) == 0)
  np.testing.assert_array_equal(decode.sample(logits, key, 1.0, top_k=1), greedy)
  np.testing.assert_array_equal(decode.sample(logits, key, 1.0, top_p=0.4), greedy)
  top2 = np.asarray(decode.sample(logits, key, 1.0, top_k=2))
  assert set(np.unique(top2)) == {0, 1}
  # top_p=0.7: mass before token 2 is 0.8 >= 0.7, so only {0, 1} survive; renormalised 5:3.
  top_p = np.asarray(decode.sample(logits, key, 1.0, top_p=0.7))
  assert set(np.unique(top_p)) == {0, 1}
  assert abs(np.mean(top_p == 0) - 0.625) < 0.04
  # Plain temperature 1 sampling follows the softmax (4000 draws, generous bound).
  freq = np.bincount(np.asarray(decode.sample(logits, key, 1.0)), minlength=4) / 4000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  # Low temperature sharpens towards the argmax.
  cold = np.asarray(decode.sample(logits, key, 0.1))
  assert np.mean(cold == 0) > 0.95


def test_cache_longer_than_config_rejected():
  cfg = _cfg()
  with pytest.raises(ValueError, match="max_seq_len"):
    decode.init_cache(cfg, 1, cfg.max_seq_len + 1)


def test_cached_decode_after_multimodal_prompt_equals_full_forward():
  cfg = _cfg(vision=config.get_config("flash_tiny").vision)
  params = transformer.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(cfg.vision.image_size,) * 2 + (cfg.vision.channels,)).astype(np.float32)
  text = lambda n: rng.integers(0, cfg.vocab_size, n)
  prompt, gen = [("text", text(3)), ("image", image), ("text", text(2))], text(6)
  p = multimodal.sequence_length(prompt, cfg)
  full_batch = multimodal.build_batch([prompt + [("text", gen)]], cfg, p + len(gen))
  full, _ = jax.jit(transformer.forward, static_argnames="cfg")(params, full_batch, cfg=cfg)
  cache = decode.init_cache(cfg, 1, p + len(gen))
  logits, cache = decode.jit_prefill(params, multimodal.build_batch([prompt], cfg, p), cache,
                                     cfg=cfg)
  np.testing.assert_allclose(logits, full[:, :p], atol=1e-4)
  # The image's tokens attend to each other both ways: its first token sees later ones.
  assert int(cache["bidir_ids"][0, 3]) != 0 and int(cache["bidir_ids"][0, 2]) == 0
  for i, tok in enumerate(gen[:-1]):
    logits, cache = decode.jit_decode_step(params, jnp.array([tok], jnp.int32), cache, cfg=cfg)
    np.testing.assert_allclose(logits, full[:, p + i], atol=1e-4, err_msg=f"step {i}")


def test_cache_overflow_is_a_clear_error():
  cfg = _cfg(n_layers=1)
  params = transformer.init_params(cfg, jax.random.key(0))
  cache = decode.init_cache(cfg, 1, 4)
  _, cache = decode.prefill(params, {"tokens": jnp.zeros((1, 4), jnp.int32)}, cache, cfg)
  with pytest.raises(ValueError, match="overflow"):
    decode.decode_step(params, jnp.zeros((1,), jnp.int32), cache, cfg)


@pytest.mark.parametrize("name", ["nano_tiny", "pro_tiny", "smollm2_135m"])
def test_cache_is_sized_by_config(name):
  cfg = config.get_config(name)  # bf16 cache: family's KV bytes per token
  cache = jax.eval_shape(lambda: decode.init_cache(cfg, 3))
  kv = sum(cache[k].size * cache[k].dtype.itemsize for k in ("k", "v"))
  assert kv == family.kv_bytes_per_token(cfg) * 3 * cfg.max_seq_len
  assert cache["k"].shape == (cfg.n_layers, 3, cfg.max_seq_len, cfg.n_kv_heads, cfg.head_dim)


def test_rows_decode_independently_at_their_own_offsets():
  """A slot that joins late (its own write offset) decodes as if it were alone."""
  cfg = _cfg()
  params = transformer.init_params(cfg, jax.random.key(4))
  toks = jax.random.randint(jax.random.key(6), (2, 12), 0, cfg.vocab_size)
  full, _ = transformer.forward(params, {"tokens": toks}, cfg)
  cache = decode.init_cache(cfg, 2, 16)
  # Row 0 prefills 6 tokens, row 1 only 2 (its other columns are padding: segment 0, and it
  # keeps its own offset): then both step one token at a time.
  seg = jnp.array([[1] * 6, [1, 1, 0, 0, 0, 0]], jnp.int32)
  _, cache = decode.jit_prefill(params, {"tokens": toks[:, :6], "segment_ids": seg}, cache,
                                cfg=cfg)
  cache = dict(cache, index=jnp.array([6, 2], jnp.int32),
               next_position=jnp.array([6, 2], jnp.int32), segment=jnp.array([1, 1], jnp.int32))
  for t in range(4):
    step_toks = jnp.stack([toks[0, 6 + t], toks[1, 2 + t]])
    logits, cache = decode.jit_decode_step(params, step_toks, cache, cfg=cfg)
    np.testing.assert_allclose(logits[0], full[0, 6 + t], atol=1e-4)
    np.testing.assert_allclose(logits[1], full[1, 2 + t], atol=1e-4)
