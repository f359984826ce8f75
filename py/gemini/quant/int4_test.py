"""int4 quantisation: exact pack/unpack, the scale/2 error bound, the params tree, the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import ModelConfig
from gemini.quant import int4, int4_forward, linear, params as qparams
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


def test_int4_linear_matches_dequantised_dot():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((96, 40)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 3, 96)), jnp.float32)
  qw = int4.quantize(w, 32)
  want = np.asarray(x) @ np.asarray(int4.dequantize(qw))
  np.testing.assert_allclose(np.asarray(linear.int4_linear(x, qw)), want, rtol=1e-5, atol=1e-5)
  tok = jnp.asarray([[3, 0], [39, 3]])
  e = np.asarray(linear.embed_lookup(qw, tok))
  np.testing.assert_array_equal(e, np.asarray(int4.dequantize(qw)).T[np.asarray(tok)])


# Jitted (cfg static): op-by-op dispatch of a whole forward is slow on a busy CI machine.
FWD = jax.jit(int4_forward.forward, static_argnames=("cfg", "dtype", "impl", "collect"))

TINY = ModelConfig(name="t", vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=16, d_ff=96, max_seq_len=64, activation="silu")


def test_forward_float_matches_dequantised_tree_and_cache():
  params = random_params(TINY, jax.random.key(0))
  qp = qparams.quantize_params(params, TINY, group_size=32)
  assert isinstance(qp["layers"][1]["attn"]["wo"], int4.Int4Weight)
  assert qp["layers"][1]["attn"]["wo"].k == TINY.n_heads * TINY.head_dim
  # The int4 forward equals the float forward run on the dequantised weights.
  deq = jax.tree.map(lambda l: l, qp, is_leaf=lambda l: isinstance(l, int4.Int4Weight))
  deq = {"embed": {"tokens": int4.dequantize(qp["embed"]["tokens"]).T},
         "final_norm": qp["final_norm"],
         "layers": [{"attn_norm": l["attn_norm"], "mlp_norm": l["mlp_norm"],
                     "attn": {n: int4.dequantize(l["attn"][n]) for n in ("wq", "wk", "wv", "wo")},
                     "mlp": {n: int4.dequantize(l["mlp"][n]) for n in ("w_gate", "w_up", "w_down")}}
                    for l in qp["layers"]]}
  for l in deq["layers"]:  # Back to the family shapes.
    a = l["attn"]
    a["wq"] = a["wq"].reshape(64, 4, 16); a["wk"] = a["wk"].reshape(64, 2, 16)
    a["wv"] = a["wv"].reshape(64, 2, 16); a["wo"] = a["wo"].reshape(4, 16, 64)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  lq, _, _ = FWD(qp, tokens, TINY)
  ld, _, _ = FWD(deq, tokens, TINY)
  np.testing.assert_allclose(np.asarray(lq), np.asarray(ld), rtol=1e-4, atol=1e-4)
  # Cached prefill + one-token steps reproduce the full causal forward.
  cache = int4_forward.init_cache(TINY, 2, 16)
  l1, cache, _ = FWD(qp, tokens[:, :7], TINY, cache=cache, cache_index=0)
  steps = [l1]
  for t in range(7, 12):
    lt, cache, _ = FWD(qp, tokens[:, t:t + 1], TINY, cache=cache, cache_index=t)
    steps.append(lt)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(lq),
                             rtol=1e-4, atol=1e-4)
  # Int4 is close to (but not equal to) the float model.
  lf, _, _ = FWD(params, tokens, TINY)
  rel = float(jnp.linalg.norm(lf - lq) / jnp.linalg.norm(lf))
  assert 1e-3 < rel < 0.6, rel  # Random Gaussian weights lose ~10% per matrix in int4.


def test_forward_matches_gemini_model_when_available():
  transformer = pytest.importorskip("gemini.model.transformer")
  cfg = TINY.replace(dtype="float32")
  params = random_params(cfg, jax.random.key(2))
  tokens = jax.random.randint(jax.random.key(3), (1, 10), 0, 64)
  want, _ = transformer.forward(params, {"tokens": tokens}, cfg)
  got, _, _ = int4_forward.forward(params, tokens, cfg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)


def test_forward_through_pallas_kernel_matches_xla():
  """The model's linear layers through the Pallas int4 kernel (interpret mode on CPU)."""
  cfg = TINY.replace(n_layers=1)
  params = random_params(cfg, jax.random.key(4))
  qp = qparams.quantize_params(params, cfg, group_size=32)
  tokens = jax.random.randint(jax.random.key(5), (1, 9), 0, 64)
  want, _, _ = int4_forward.forward(qp, tokens, cfg, impl="xla")
  got, _, _ = int4_forward.forward(qp, tokens, cfg, impl="pallas")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_quantize_params_refuses_a_tree_that_is_not_the_config():
  params = random_params(TINY, jax.random.key(0))
  with pytest.raises(ValueError, match="n_layers=3"):
    qparams.quantize_params(params, TINY.replace(n_layers=3))
  with pytest.raises(ValueError, match="layers/0/mlp/w_gate' has shape"):
    qparams.quantize_params(params, TINY.replace(d_ff=128))
  with pytest.raises(ValueError, match="MoE"):
    from gemini.config import MoEConfig
    qparams.quantize_params(params, TINY.replace(moe=MoEConfig(num_experts=2, top_k=1, d_ff=8)))
