"""Layer tests: attention (mask, GQA, kernels) against references, RoPE, RMSNorm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini import config
from gemini.model import attention, norm, rope, transformer


def _small(name="nano_tiny", **kw):
  small = dict(dtype="float32", n_layers=1, vocab_size=256, d_model=64, d_ff=128, head_dim=16)
  return config.get_config(name).replace(**{**small, **kw})


def _naive_attention(q, k, v, seg, pos, bidir):
  """Loop-per-head NumPy reference with explicitly repeated kv heads."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, s, h, dh = q.shape
  rep = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      kh = hi // rep
      for i in range(s):
        ok = [seg[bi, j] == seg[bi, i] and seg[bi, i] != 0 and
              (pos[bi, j] <= pos[bi, i] or (bidir[bi, i] != 0 and bidir[bi, i] == bidir[bi, j]))
              for j in range(s)]
        if not any(ok):
          continue
        sc = np.array([q[bi, i, hi] @ k[bi, j, kh] / math.sqrt(dh) if ok[j] else -np.inf
                       for j in range(s)])
        p = np.exp(sc - sc.max())
        out[bi, i, hi] = (p / p.sum()) @ v[bi, :, kh]
  return out


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_attention_matches_naive_reference(kv_heads):
  rng = np.random.default_rng(0)
  b, s, h, dh = 2, 9, 4, 8
  q = rng.normal(size=(b, s, h, dh)).astype(np.float32)
  k = rng.normal(size=(b, s, kv_heads, dh)).astype(np.float32)
  v = rng.normal(size=(b, s, kv_heads, dh)).astype(np.float32)
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0], [1] * 9], np.int32)
  pos = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 0], list(range(9))], np.int32)
  bidir = np.array([[0, 1, 1, 0, 0, 0, 3, 3, 0], [0, 0, 5, 5, 5, 0, 0, 6, 6]], np.int32)
  got = attention.attention(q, k, v, seg, pos, bidir)
  want = _naive_attention(q, k, v, seg, pos, bidir)
  valid = seg != 0
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-5)
  assert np.all(np.isfinite(np.asarray(got)))
  # Bidirectional items really change the result versus purely causal.
  causal_only = attention.attention(q, k, v, seg, pos, None)
  assert float(np.max(np.abs(np.asarray(causal_only)[0, 1] - np.asarray(got)[0, 1]))) > 1e-3


def test_kernel_impl_rejects_bidir_or_unknown():
  x = jnp.zeros((1, 4, 2, 8))
  seg = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="impl='bogus'"):
    attention.attention(x, x, x, seg, impl="bogus")
  with pytest.raises(ValueError, match="ring.*mesh"):
    attention.attention(x, x, x, seg, impl="ring")


def test_rms_norm_matches_numpy():
  x = np.random.default_rng(1).normal(size=(3, 5, 16)).astype(np.float32)
  scale = np.linspace(0.5, 2, 16).astype(np.float32)
  want = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale
  got = norm.rms_norm({"scale": jnp.asarray(scale)}, jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), 1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-2)
  np.testing.assert_allclose(norm.rms_norm({"scale": scale}, x, 1e-6), want, rtol=1e-5, atol=1e-6)


def test_rope_matches_numpy_and_is_relative():
  rng = np.random.default_rng(2)
  dh, base = 8, 10000.0
  x = rng.normal(size=(1, 5, 1, dh)).astype(np.float32)
  pos = np.array([[0, 1, 2, 7, 100]], np.int32)
  got = np.asarray(rope.apply_rope(jnp.asarray(x), jnp.asarray(pos), base))
  want = np.zeros_like(x)
  for s in range(5):
    for i in range(dh // 2):
      a = pos[0, s] * base ** (-2 * i / dh)
      x1, x2 = x[0, s, 0, i], x[0, s, 0, i + dh // 2]
      want[0, s, 0, i] = x1 * np.cos(a) - x2 * np.sin(a)
      want[0, s, 0, i + dh // 2] = x2 * np.cos(a) + x1 * np.sin(a)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # <rope(q, m), rope(k, n)> depends only on m - n.
  q = jnp.asarray(rng.normal(size=(1, 1, 1, dh)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, dh)), jnp.float32)
  dot = lambda m, n: float(jnp.sum(rope.apply_rope(q, jnp.array([[m]]), base)
                                   * rope.apply_rope(k, jnp.array([[n]]), base)))
  np.testing.assert_allclose(dot(5, 2), dot(13, 10), rtol=1e-4)
  assert abs(dot(5, 2) - dot(5, 4)) > 1e-4


def test_flash_impl_forward_and_grad_equal_xla():
  cfg = _small(n_kv_heads=2)
  params = transformer.init_params(cfg, jax.random.key(0))
  toks = jax.random.randint(jax.random.key(1), (1, 21), 0, cfg.vocab_size)
  b = {"tokens": toks[:, :-1], "targets": toks[:, 1:]}
  b["segment_ids"] = jnp.array([[1] * 12 + [2] * 6 + [0] * 2], jnp.int32)
  b["positions"] = jnp.array([list(range(12)) + list(range(6)) + [0, 0]], jnp.int32)
  run = lambda impl: jax.jit(jax.value_and_grad(
      lambda p: transformer.loss_fn(p, b, cfg, attn_impl=impl)[0]))(params)
  (l_x, g_x), (l_f, g_f) = run("xla"), run("flash")
  np.testing.assert_allclose(l_f, l_x, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(a, c, atol=2e-5)
  # The kernel takes bidirectional media items (ids 1 and 2) with the same mask as xla.
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 12, 2, 8)) for i in (2, 3, 4))
  seg = jnp.ones((1, 12), jnp.int32)
  bid = jnp.array([[0, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0]], jnp.int32)
  got = attention.attention(q, k, v, seg, bidir_ids=bid, impl="flash")
  np.testing.assert_allclose(got, attention.attention(q, k, v, seg, bidir_ids=bid), atol=2e-5)
