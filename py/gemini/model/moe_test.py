"""MoE layer against independent NumPy references (float64) on small shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import ModelConfig, MoEConfig
from gemini.model import mlp as mlp_lib
from gemini.model import moe, spec


def _cfg(e=4, k=2, gate="softmax", dispatch="dropless", cf=1.25, act="gelu", d=16, fe=24):
  return ModelConfig(name="moe_test", vocab_size=32, d_model=d, n_layers=2, n_heads=2,
                     n_kv_heads=1, head_dim=8, d_ff=fe, dtype="float32", activation=act,
                     moe=MoEConfig(num_experts=e, top_k=k, d_ff=fe, gate=gate,
                                   dispatch=dispatch, capacity_factor=cf))


def _params(cfg, seed=0, router_scale=50.0):
  p = spec.init_layer(cfg, jax.random.PRNGKey(seed), moe=True)["moe"]
  # A stronger router than init so routing is decisive and uneven (drops happen).
  p["router"] = p["router"] * router_scale
  return p


def _x(b=2, s=12, d=16, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, s, d), jnp.float32)


# ---- NumPy references ---------------------------------------------------------------------

def _np_act(name, x):
  if name == "gelu":
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
  return x / (1.0 + np.exp(-x))


def _np_ffn(w_gate, w_up, w_down, x, act):
  return (_np_act(act, x @ w_gate) * (x @ w_up)) @ w_down


def _np_route(x, router, k, gate):
  """Returns ids [T,k], gates [T,k], probs [T,E], logits [T,E] in float64."""
  logits = x @ router
  if gate == "softmax":
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, ids, -1)
    if k > 1:
      g = np.exp(chosen - chosen.max(-1, keepdims=True))
      gates = g / g.sum(-1, keepdims=True)
    else:
      gates = np.take_along_axis(probs, ids, -1)
  else:
    scores = 1.0 / (1.0 + np.exp(-logits))
    ids = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    gates = np.take_along_axis(scores, ids, -1)
    probs = scores / scores.sum(-1, keepdims=True)
  return ids, gates, probs, logits


def _np_keep(ids, e, cap):
  """keep [T,k] bool: first choices of all tokens in order, then second choices."""
  t, k = ids.shape
  used = [0] * e
  keep = np.zeros((t, k), bool)
  for j in range(k):
    for i in range(t):
      if used[ids[i, j]] < cap:
        used[ids[i, j]] += 1
        keep[i, j] = True
  return keep


def _np_moe(params, x, cfg, cap=None):
  """Dense one-hot reference: every expert on every token, weighted by a [T,E] combine matrix."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  xt = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  e = cfg.moe.num_experts
  ids, gates, _, _ = _np_route(xt, p["router"], cfg.moe.top_k, cfg.moe.gate)
  keep = np.ones_like(ids, bool) if cap is None else _np_keep(ids, e, cap)
  combine = np.zeros((xt.shape[0], e))
  for j in range(ids.shape[1]):
    combine[np.arange(xt.shape[0]), ids[:, j]] += gates[:, j] * keep[:, j]
  all_out = np.stack([_np_ffn(p["w_gate"][i], p["w_up"][i], p["w_down"][i], xt, cfg.activation)
                      for i in range(e)], axis=1)                      # [T,E,D]
  y = np.einsum("te,ted->td", combine, all_out)
  return y.reshape(x.shape), int((~keep).sum())


# ---- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_one_expert_equals_dense_mlp(dispatch, act):
  cfg = _cfg(e=1, k=1, dispatch=dispatch, act=act)
  dense = spec.init_layer(cfg.replace(d_ff=cfg.moe.d_ff), jax.random.PRNGKey(3))["mlp"]
  x = _x()
  y, metrics = moe.moe_mlp(moe.dense_as_moe(dense, cfg.d_model), x, cfg)
  d = {k: np.asarray(v, np.float64) for k, v in dense.items()}
  ref = _np_ffn(d["w_gate"], d["w_up"], d["w_down"], np.asarray(x, np.float64), act)
  np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y), np.asarray(mlp_lib.gated_mlp(dense, x, cfg)),
                             atol=1e-5, rtol=1e-5)
  assert int(metrics["tokens_dropped"]) == 0


@pytest.mark.parametrize("impl", ["xla", "tiled"])
@pytest.mark.parametrize("k,gate", [(1, "softmax"), (2, "softmax"), (2, "sigmoid")])
def test_dropless_equals_dense_onehot_reference(k, gate, impl):
  cfg = _cfg(e=4, k=k, gate=gate, dispatch="dropless")
  params, x = _params(cfg), _x()
  y, metrics = jax.jit(lambda p, x: moe.moe_mlp(p, x, cfg, impl=impl))(params, x)
  ref, _ = _np_moe(params, x, cfg)
  np.testing.assert_allclose(np.asarray(y), ref, atol=2e-5, rtol=1e-4)
  assert int(metrics["tokens_dropped"]) == 0 and float(metrics["drop_fraction"]) == 0.0


@pytest.mark.parametrize("k", [1, 2])
def test_capacity_equals_dropless_when_capacity_is_large(k):
  x = _x()
  cfg_c = _cfg(e=4, k=k, dispatch="capacity", cf=4.0)   # C = T*k: nothing can overflow
  params = _params(cfg_c)
  y_c, m_c = moe.moe_mlp(params, x, cfg_c)
  y_d, _ = moe.moe_mlp(params, x, _cfg(e=4, k=k, dispatch="dropless"))
  assert int(m_c["tokens_dropped"]) == 0
  np.testing.assert_allclose(np.asarray(y_c), np.asarray(y_d), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_small_capacity_drops_counted_exactly(k):
  cfg = _cfg(e=4, k=k, dispatch="capacity", cf=0.5)
  params, x = _params(cfg), _x()
  t = x.shape[0] * x.shape[1]
  cap = moe.capacity(t, cfg)
  assert cap == math.ceil(0.5 * t * k / 4)
  y, metrics = moe.moe_mlp(params, x, cfg)
  ref, ref_dropped = _np_moe(params, x, cfg, cap=cap)
  assert ref_dropped > 0, "test setup must overflow some expert"
  assert int(metrics["tokens_dropped"]) == ref_dropped
  np.testing.assert_allclose(float(metrics["drop_fraction"]), ref_dropped / (t * k), rtol=1e-6)
  # Dropped tokens get exactly the kept experts' output (zero from the dropped expert).
  np.testing.assert_allclose(np.asarray(y), ref, atol=2e-5, rtol=1e-4)
  # Any token dropped from all its choices has output exactly 0 (the residual carries it).
  ids, _, _, _ = _np_route(np.asarray(x, np.float64).reshape(t, -1),
                           np.asarray(params["router"], np.float64), k, "softmax")
  all_dropped = ~_np_keep(ids, 4, cap).any(axis=1)
  assert all_dropped.any()
  assert np.all(np.asarray(y).reshape(t, -1)[all_dropped] == 0.0)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_aux_and_z_loss_match_numpy(gate):
  cfg = _cfg(e=4, k=2, gate=gate)
  params, x = _params(cfg, router_scale=5.0), _x(b=1, s=8)
  _, metrics = moe.moe_mlp(params, x, cfg)
  xt = np.asarray(x, np.float64).reshape(8, -1)
  ids, _, probs, logits = _np_route(xt, np.asarray(params["router"], np.float64), 2, gate)
  f = np.array([(ids == e).sum() for e in range(4)]) / ids.size
  aux = 4 * np.sum(f * probs.mean(0))
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(float(metrics["aux_loss"]), aux, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["z_loss"]), np.mean(lse ** 2), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["expert_load"]), f, rtol=1e-6)


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_gradients_finite_and_reach_every_param(dispatch):
  cfg = _cfg(e=4, k=2, dispatch=dispatch, cf=1.0)
  params, x = _params(cfg, router_scale=5.0), _x()

  def loss(p, x):
    y, m = moe.moe_mlp(p, x, cfg)
    return jnp.mean(y ** 2) + 1e-2 * m["aux_loss"] + 1e-3 * m["z_loss"]

  gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  for name, g in {**gp, "x": gx}.items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), name
    assert np.any(g != 0), name


@pytest.mark.parametrize("k", [1, 2])
def test_tiled_gradients_equal_ragged_dot_dropless(k):
  # Uneven routing (router x50: some experts get nothing) through every parameter and x.
  cfg = _cfg(e=4, k=k, dispatch="dropless")
  params, x = _params(cfg), _x(b=2, s=24)
  probe = jax.random.normal(jax.random.PRNGKey(5), x.shape)

  def loss(impl):
    def f(p, x):
      y, m = moe.moe_mlp(p, x, cfg, impl=impl)
      return jnp.sum(y * probe) + 1e-2 * m["aux_loss"]
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  (gp_t, gx_t), (gp_x, gx_x) = loss("tiled")(params, x), loss("xla")(params, x)
  ids = moe.router_lib.route(x.reshape(-1, 16), params["router"], k, "softmax").expert_ids
  counts = np.bincount(np.asarray(ids).ravel(), minlength=4)
  assert counts.max() > counts.min(), "test setup must route unevenly"
  for name in params:
    np.testing.assert_allclose(np.asarray(gp_t[name]), np.asarray(gp_x[name]), atol=1e-5,
                               rtol=1e-4, err_msg=name)
  np.testing.assert_allclose(np.asarray(gx_t), np.asarray(gx_x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "tiled"])
def test_bf16_runs_and_keeps_dtype(impl):
  cfg = _cfg(e=4, k=2).replace(dtype="bfloat16")
  params, x = _params(cfg), _x().astype(jnp.bfloat16)
  y, m = moe.moe_mlp(params, x, cfg, impl=impl)
  assert y.dtype == jnp.bfloat16 and m["aux_loss"].dtype == jnp.float32
  ref, _ = _np_moe(params, x.astype(jnp.float32), cfg)
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05, rtol=0.05)


def test_bad_config_errors_name_the_field():
  cfg = _cfg(e=4, k=2)
  params = _params(cfg)
  with pytest.raises(ValueError, match="num_experts"):
    moe.moe_mlp(params, _x(), _cfg(e=2, k=1))
  with pytest.raises(ValueError, match="impl"):
    moe.moe_mlp(params, _x(), cfg, impl="cuda")


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_pallas_impl_equals_xla(dispatch):
  pytest.importorskip("pallas.moe.ops")
  cfg = _cfg(e=4, k=2, dispatch=dispatch, cf=0.75)    # capacity mode drops some assignments
  params, x = _params(cfg, router_scale=5.0), _x(b=1, s=16)
  y_x, m_x = moe.moe_mlp(params, x, cfg)
  y_p, m_p = moe.moe_mlp(params, x, cfg, impl="pallas")
  np.testing.assert_allclose(np.asarray(y_p), np.asarray(y_x), atol=2e-5, rtol=1e-4)
  assert int(m_p["tokens_dropped"]) == int(m_x["tokens_dropped"])
  np.testing.assert_allclose(float(m_p["aux_loss"]), float(m_x["aux_loss"]), rtol=1e-6)
