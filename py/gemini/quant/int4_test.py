"""int4 quantisation: exact pack/unpack, the scale/2 error bound, the params tree, the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import ModelConfig, MoEConfig
from gemini.model import decode, dense, transformer
from gemini.quant import int4, params as qparams, test_util
from gemini.quant.test_util import random_params


@pytest.mark.parametrize("k,n", [(64, 3), (7, 5), (130, 1)])
def test_pack_unpack_exact(k, n):
  rng = np.random.default_rng(k)
  q = rng.integers(-8, 8, size=(2 * k, n)).astype(np.int8)  # Every nibble value, even -8.
  packed = int4.pack(jnp.asarray(q))
  assert packed.dtype == jnp.uint8 and packed.shape == (k, n)
  np.testing.assert_array_equal(np.asarray(int4.unpack(packed)), q)
  # Bytes hold row i low and row i + K/2 high, offset by 8: check one byte by hand.
  assert int(packed[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[k, 0]) + 8) << 4)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_error_bounded_by_half_scale(group, scale_dtype):
  rng = np.random.default_rng(group)
  k, n = 300, 17  # K not a multiple of the group: exercises padding.
  w = rng.standard_normal((k, n)).astype(np.float32) * rng.uniform(1e-3, 10, size=(1, n))
  w[:, 0] = 0.0  # An all-zero column: scale 0, exact zeros.
  qw = int4.quantize(jnp.asarray(w), group, scale_dtype)
  assert qw.scales.dtype == jnp.dtype(scale_dtype)
  assert qw.k == k and qw.k_padded % (2 * group) == 0 and qw.k_padded >= k
  deq = np.asarray(int4.dequantize(qw))
  s = np.repeat(np.asarray(qw.scales.astype(jnp.float32)), group, axis=0)[:k]
  err = np.abs(deq - w)
  assert np.all(err <= s / 2 + 1e-7 * np.abs(w)), float(np.max(err - s / 2))
  assert np.all(deq[:, 0] == 0)
  q = int4.int4_values(qw)
  assert q.min() >= -7 and q.max() <= 7
  # The largest magnitude of each group reaches +-7 (the scale is absmax/7, not looser).
  full = (k // group) * group
  absq = np.abs(q[:full, 1:]).reshape(k // group, group, n - 1).max(axis=1)
  assert np.all(absq == 7)


def test_quantize_rejects_bad_arguments():
  with pytest.raises(ValueError, match="group_size=48"):
    int4.quantize(jnp.ones((64, 4)), 48)
  with pytest.raises(ValueError, match="scale_dtype"):
    int4.quantize(jnp.ones((64, 4)), 32, "float32")


def test_dense_int4_matches_dequantised_dot_and_lookup():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((96, 40)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 3, 96)), jnp.float32)
  qw = int4.quantize(w, 32)
  want = np.asarray(x) @ np.asarray(int4.dequantize(qw))
  np.testing.assert_allclose(np.asarray(dense.dense(x, qw)), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dense.dense(x, qw, out=(4, 10))),
                             want.reshape(2, 3, 4, 10), rtol=1e-5, atol=1e-5)
  tok = jnp.asarray([[3, 0], [39, 3]])
  e = np.asarray(dense.lookup(qw, tok, jnp.float32))
  np.testing.assert_array_equal(e, np.asarray(int4.dequantize(qw)).T[np.asarray(tok)])


TINY = ModelConfig(name="t", vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=16, d_ff=96, max_seq_len=64, activation="silu", dtype="float32")
# Jitted (cfg static): op-by-op dispatch of a whole forward is slow on a busy CI machine.
FWD = jax.jit(lambda p, t, cfg, impl="xla": transformer.forward(p, {"tokens": t}, cfg,
                                                                int4_impl=impl)[0],
              static_argnames=("cfg", "impl"))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_one_forward_runs_int4_trees_like_their_dequantised_floats(qk_norm):
  cfg = TINY.replace(qk_norm=qk_norm)
  params = random_params(cfg, jax.random.key(0))
  qp = qparams.quantize_params(params, cfg, group_size=32)
  wo = qp["blocks"][0]["attn"]["wo"]
  assert isinstance(wo, int4.Int4Weight) and wo.k == cfg.n_heads * cfg.head_dim
  assert wo.packed.shape[0] == cfg.n_layers                      # stacked [L, Kp/2, N]
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  lq = FWD(qp, tokens, cfg)
  ld = FWD(test_util.dequantized(qp, cfg), tokens, cfg)
  np.testing.assert_allclose(np.asarray(lq), np.asarray(ld), rtol=1e-4, atol=1e-4)
  # Cached prefill + one-token steps of the int4 tree reproduce its full causal forward.
  cache = decode.init_cache(cfg, 2, 16)
  l1, cache = decode.jit_prefill(qp, {"tokens": tokens[:, :7]}, cache, cfg=cfg)
  steps = [l1]
  for t in range(7, 12):
    lt, cache = decode.jit_decode_step(qp, tokens[:, t], cache, cfg=cfg)
    steps.append(lt[:, None])
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(lq),
                             rtol=1e-4, atol=1e-4)
  # Int4 is close to (but not equal to) the float model.
  lf = FWD(params, tokens, cfg)
  rel = float(jnp.linalg.norm(lf - lq) / jnp.linalg.norm(lf))
  assert 1e-3 < rel < 0.6, rel  # Random Gaussian weights lose ~10% per matrix in int4.


def test_forward_through_pallas_kernel_matches_xla():
  """The model's matmuls through the Pallas int4 kernel (interpret mode on CPU)."""
  cfg = TINY.replace(n_layers=1)
  params = random_params(cfg, jax.random.key(4))
  qp = qparams.quantize_params(params, cfg, group_size=32)
  tokens = jax.random.randint(jax.random.key(5), (1, 9), 0, 64)
  want = FWD(qp, tokens, cfg, "xla")
  got = FWD(qp, tokens, cfg, "pallas")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_quantize_params_refuses_a_tree_that_is_not_the_config():
  params = random_params(TINY, jax.random.key(0))
  with pytest.raises(ValueError, match=r"attn_norm/scale' has shape \(2, 64\).*\(3, 64\)"):
    qparams.quantize_params(params, TINY.replace(n_layers=3))
  with pytest.raises(ValueError, match="mlp/w_gate' has shape"):
    qparams.quantize_params(params, TINY.replace(d_ff=128))
  with pytest.raises(ValueError, match="MoE"):
    qparams.quantize_params(params, TINY.replace(moe=MoEConfig(num_experts=2, top_k=1, d_ff=8)))
