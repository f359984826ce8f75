"""SmolLM2-135M-Instruct imported from its GGUF: exact import, real answers, cached decode."""

import codecs
import functools
import importlib.util
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config
from gemini.checkpoints import gguf as G
from gemini.model import decode, spec, transformer



def _llama_rows(m, heads):
  """llama.cpp's Q/K row order of rotate-half rows [heads*Dh, C]: within each head, row
  2p + c of llama holds rotate-half row c*Dh/2 + p (pairs adjacent instead of split)."""
  dh = m.shape[0] // heads
  return np.asarray(m)[np.array([h * dh + c * (dh // 2) + q for h in range(heads)
                                 for q in range(dh // 2) for c in range(2)])]


@functools.lru_cache(maxsize=None)
def _model():
  m = G.load()
  return m, jax.tree.map(jnp.asarray, m.params), m.cfg.replace(dtype="float32")


@functools.lru_cache(maxsize=None)
def _reader():
  return G.open_reader(G.find_smollm2_gguf())


def _raw(name):
  return next(t for t in _reader().tensors if t.name == name)


def _f16(b):
  return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _decode_q4_1(t):
  """Independent Q4_1 decode: 20-byte blocks of (d f16, m f16, 16 bytes of 32 nibbles);
  element j < 16 is the low nibble of byte j, element 16 + j its high nibble; x = d*q + m."""
  blocks = np.asarray(t.data, np.uint8).reshape(-1, 20)
  d, m, qs = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), blocks[:, 4:]
  q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
  return (d * q + m).reshape(t.data.shape[0], -1)


def _decode_q8_0(t):
  """Independent Q8_0 decode: 34-byte blocks of (d f16, 32 int8); x = d*q."""
  blocks = np.asarray(t.data, np.uint8).reshape(-1, 34)
  d, q = _f16(blocks[:, 0:2]), blocks[:, 2:].view(np.int8).astype(np.float32)
  return (d * q).reshape(t.data.shape[0], -1)


def _interleaved_rope(x, pos, base):
  """llama.cpp's RoPE on adjacent pairs (2i, 2i+1) of x [..., Dh]."""
  dh = x.shape[-1]
  a = pos * base ** (-np.arange(0, dh, 2) / dh)
  x1, x2 = x[..., 0::2], x[..., 1::2]
  out = np.empty_like(x)
  out[..., 0::2] = x1 * np.cos(a) - x2 * np.sin(a)
  out[..., 1::2] = x2 * np.cos(a) + x1 * np.sin(a)
  return out


def _half_rope(x, pos, base):
  dh = x.shape[-1]
  a = pos * base ** (-np.arange(0, dh, 2) / dh)
  x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
  return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)


def _zen_of_python() -> str:
  """The stdlib's `this` module text, read without importing it (importing prints it)."""
  src = open(importlib.util.find_spec("this").origin, encoding="utf-8").read()
  return codecs.decode(re.search(r's = """(.*?)"""', src, re.S).group(1), "rot13")


def test_config_from_metadata_matches_preset():
  m, _, _ = _model()
  assert m.cfg == config.get_config("smollm2_135m")


def test_import_is_exact():
  m, _, cfg = _model()
  p = m.params
  layers = spec.unstack_layers(p, cfg)
  d, dh = cfg.d_model, cfg.head_dim
  np.testing.assert_array_equal(p["embed"]["tokens"], _decode_q8_0(_raw("token_embd.weight")))
  np.testing.assert_array_equal(p["final_norm"]["scale"], np.asarray(_raw("output_norm.weight").data))
  np.testing.assert_array_equal(layers[7]["mlp_norm"]["scale"],
                                np.asarray(_raw("blk.7.ffn_norm.weight").data))
  np.testing.assert_array_equal(layers[5]["mlp"]["w_down"], _decode_q4_1(_raw("blk.5.ffn_down.weight")).T)
  np.testing.assert_array_equal(layers[2]["attn"]["wv"].reshape(d, -1).T,
                                _decode_q4_1(_raw("blk.2.attn_v.weight")))
  np.testing.assert_array_equal(layers[29]["attn"]["wo"].reshape(-1, d).T,
                                _decode_q4_1(_raw("blk.29.attn_output.weight")))
  for layer, kind, heads in ((0, "q", cfg.n_heads), (3, "k", cfg.n_kv_heads)):
    raw = _decode_q4_1(_raw(f"blk.{layer}.attn_{kind}.weight"))            # [heads*Dh, D]
    ours = layers[layer]["attn"]["w" + kind]                            # [D, heads, Dh]
    # Exactly the GGUF values, re-ordered only inside heads by llama.cpp's permutation.
    np.testing.assert_array_equal(_llama_rows(ours.reshape(d, -1).T, heads), raw)
  # Independent semantic check: attention scores from our rotate-half RoPE on our weights
  # equal those from llama.cpp's interleaved RoPE on the raw GGUF rows (GQA: 9 q, 3 kv heads).
  rng = np.random.default_rng(0)
  for layer in (0, 11):
    q_raw = _decode_q4_1(_raw(f"blk.{layer}.attn_q.weight")).astype(np.float64)
    k_raw = _decode_q4_1(_raw(f"blk.{layer}.attn_k.weight")).astype(np.float64)
    wq, wk = (layers[layer]["attn"][w].astype(np.float64) for w in ("wq", "wk"))
    x, y = rng.normal(size=(2, d))
    rep = cfg.n_heads // cfg.n_kv_heads
    for qpos, kpos in ((9, 4), (300, 0), (7, 7)):
      s_gguf = np.einsum(
          "hk,hk->h", _interleaved_rope((q_raw @ x).reshape(cfg.n_heads, dh), qpos, cfg.rope_base),
          np.repeat(_interleaved_rope((k_raw @ y).reshape(cfg.n_kv_heads, dh), kpos, cfg.rope_base),
                    rep, 0))
      s_ours = np.einsum(
          "hk,hk->h", _half_rope(np.einsum("d,dhk->hk", x, wq), qpos, cfg.rope_base),
          np.repeat(_half_rope(np.einsum("d,dhk->hk", y, wk), kpos, cfg.rope_base), rep, 0))
      np.testing.assert_allclose(s_ours, s_gguf, rtol=1e-9, atol=1e-9)
      # Without un-permuting, the scores differ (so this check can fail).
      wq_bad = q_raw.T.reshape(d, cfg.n_heads, dh)
      s_bad = np.einsum("hk,hk->h", _half_rope(np.einsum("d,dhk->hk", x, wq_bad), qpos, cfg.rope_base),
                        np.repeat(_half_rope(np.einsum("d,dhk->hk", y, wk), kpos, cfg.rope_base), rep, 0))
      assert np.max(np.abs(s_bad - s_gguf)) > 1e-3


def test_tokenizer_and_chat_template():
  m, _, _ = _model()
  tok = m.tokenizer
  assert tok.get_vocab_size() == 49152
  assert tok.encode("<|im_start|>user<|im_end|>", add_special_tokens=False).ids[0] == 1
  assert tok.encode("<|im_start|>user<|im_end|>", add_special_tokens=False).ids[-1] == m.eos_id == 2
  text = "Hello world, 2024 costs 3.5€ — naïve café!\n\tOK"
  ids = tok.encode(text, add_special_tokens=False).ids
  assert tok.decode(ids) == text
  assert tok.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]
  chat = G.apply_chat_template(m.chat_template, [{"role": "user", "content": "Hi"}])
  assert chat == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  own_system = G.apply_chat_template(m.chat_template, [{"role": "system", "content": "S"},
                                                       {"role": "user", "content": "Hi"}], False)
  assert own_system == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_bad_file_is_a_clear_error(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"NOPE" + bytes(60))
  with pytest.raises(G.GGUFError, match="bad.gguf"):
    G.open_reader(str(bad))
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    G.open_reader(str(tmp_path / "missing.gguf"))


def test_paris_perplexity_and_cached_decode():
  m, params, cfg = _model()
  prompt = G.apply_chat_template(m.chat_template,
                                 [{"role": "user", "content": "What is the capital of France?"}])
  ids = jnp.array([m.tokenizer.encode(prompt, add_special_tokens=False).ids], jnp.int32)
  n_new = 12
  out = decode.generate(params, ids, cfg, n_new, eos_id=m.eos_id)
  answer = m.tokenizer.decode(np.asarray(out[0]).tolist())
  print("SmolLM2 answer:", repr(answer))
  assert "Paris" in answer

  # Cached decode (same jitted functions generate used) equals the full forward.
  seq = jnp.concatenate([ids, out], axis=1)
  p = ids.shape[1]
  cache = decode.init_cache(cfg, 1, p + n_new)
  full, _ = jax.jit(transformer.forward, static_argnames="cfg")(params, {"tokens": seq}, cfg=cfg)
  seg = jnp.ones_like(ids)
  pos = jnp.arange(p, dtype=jnp.int32)[None]
  logits, cache = decode.jit_prefill(params, {"tokens": ids, "segment_ids": seg, "positions": pos},
                                     cache, cfg=cfg)
  scale = float(jnp.max(jnp.abs(full)))
  np.testing.assert_allclose(logits, full[:, :p], atol=1e-4 * scale)
  for i in range(n_new - 1):
    step_logits, cache = decode.jit_decode_step(params, seq[:, p + i], cache, cfg=cfg)
    np.testing.assert_allclose(step_logits, full[:, p + i], atol=1e-4 * scale, err_msg=f"step {i}")

  # Perplexity on a held-out English paragraph (the Zen of Python, from the stdlib).
  zen = _zen_of_python()
  toks = jnp.array([m.tokenizer.encode(zen, add_special_tokens=False).ids], jnp.int32)
  lg, _ = jax.jit(transformer.forward, static_argnames="cfg")(params, {"tokens": toks[:, :-1]}, cfg=cfg)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(lg, -1), toks[:, 1:, None], -1).mean()
  ppl = math.exp(float(nll))
  print(f"SmolLM2-135M perplexity on the Zen of Python ({toks.shape[1]} tokens): {ppl:.2f}")
  # A broken import (e.g. Q/K left permuted) is near-uniform: ppl in the thousands.
  assert ppl < 30
