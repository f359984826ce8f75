"""Shared test helpers: a random MoE problem and an ops-vs-dense-reference comparison."""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax.experimental.pallas import tpu as pltpu

from pallas.moe import ops
from pallas.moe import reference


def problem(seed=0, t=32, d=128, f=128, e=8, k=2, dtype=jnp.float32, skew=False):
  """x [T,D], expert_ids [T,k] (distinct per token), gates [T,k], weights."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(t, d)), dtype)
  p = np.linspace(1.0, 0.05, e) if skew else np.ones(e)   # skew: some experts overloaded
  p = p / p.sum()
  ids = jnp.asarray(np.stack([rng.choice(e, k, replace=False, p=p) for _ in range(t)]), jnp.int32)
  gates = jnp.asarray(rng.uniform(0.1, 1.0, size=(t, k)), jnp.float32)
  wg = jnp.asarray(rng.normal(size=(e, d, f)) / np.sqrt(d), jnp.float32)
  wu = jnp.asarray(rng.normal(size=(e, d, f)) / np.sqrt(d), jnp.float32)
  wd = jnp.asarray(rng.normal(size=(e, f, d)) / np.sqrt(f), jnp.float32)
  return x, ids, gates, wg, wu, wd


def compare(prob, *, mesh=None, mode="dropless", capacity_factor=1.0, activation="gelu",
            groups=1, interpret=None, tol=1e-5, **kw):
  """Asserts moe_ffn == dense reference in value and in grads wrt x, gates, weights.
  Returns the metrics dict."""
  x, ids, gates, wg, wu, wd = prob
  probe = jnp.cos(jnp.arange(x.shape[1], dtype=jnp.float32))

  def loss_ops(x, gates, wg, wu, wd):
    y, m = ops.moe_ffn(x, ids, gates, wg, wu, wd, activation=activation, mesh=mesh, mode=mode,
                       capacity_factor=capacity_factor, interpret=interpret, **kw)
    return jnp.sum(y.astype(jnp.float32) * probe), (y, m)

  def loss_ref(x, gates, wg, wu, wd):
    y = reference.moe_ffn_dense(x, ids, gates, wg, wu, wd, activation=activation, mode=mode,
                                capacity_factor=capacity_factor, capacity_groups=groups)
    return jnp.sum(y.astype(jnp.float32) * probe), y

  args = (x, gates, wg, wu, wd)
  (_, (y, m)), g = jax.jit(jax.value_and_grad(loss_ops, range(5), has_aux=True))(*args)
  jax.block_until_ready((y, g, m))   # right after interpret-mode collective kernels
  (_, y_ref), g_ref = jax.value_and_grad(loss_ref, range(5), has_aux=True)(*args)
  _close(y, y_ref, tol, "y")
  for name, a, b in zip(("dx", "dgates", "dw_gate", "dw_up", "dw_down"), g, g_ref):
    _close(a, b, tol, name)
  return {k: np.asarray(v) for k, v in m.items()}


def _close(a, b, tol, name):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
  assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


def expected_metrics(prob, mode, capacity_factor, groups):
  _, ids, _, wg, _, _ = prob
  e = wg.shape[0]
  tpe = np.bincount(np.asarray(ids).reshape(-1), minlength=e)
  if mode == "capacity":
    keep = np.asarray(reference.capacity_keep(ids, e, capacity_factor, groups))
    return tpe, int((~keep).sum())
  return tpe, 0


def mesh(shape, names):
  n = int(np.prod(shape))
  return jax.make_mesh(shape, names, devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def check_ep(shape, names, k, mode, capacity_factor=1.0):
  """Expert-parallel moe_ffn on a fake-device mesh == single-device dense reference
  (outputs, gradients, metrics). Dropless runs the remote-DMA kernel in TPU interpret
  mode with race detection and asserts no race was found."""
  assert len(jax.devices()) >= int(np.prod(shape)), "needs fake devices (pytest_test devices=8)"
  pltpu.reset_tpu_interpret_mode_state()
  params = pltpu.InterpretParams(detect_races=True, dma_execution_mode="on_wait")
  e, d, itemsize = 8, 128, 4
  prob = problem(seed=len(shape) * 10 + k, t=32, d=d, e=e, k=k, skew=True)
  n_dev = int(np.prod(shape))
  m = compare(prob, mesh=mesh(shape, names), mode=mode, capacity_factor=capacity_factor,
              groups=n_dev, interpret=params)
  tpe, dropped = expected_metrics(prob, mode, capacity_factor, n_dev)
  np.testing.assert_array_equal(m["tokens_per_expert"], tpe)
  assert m["tokens_dropped"] == dropped
  ep = dict(zip(names, shape))["expert"]
  if mode == "dropless":
    assert not tpu_interpret.races.races_found
    # 2 * D * itemsize per assignment whose expert lives on another device of its group.
    ids = np.asarray(prob[1]).reshape(n_dev, -1)
    coord = np.unravel_index(np.arange(n_dev), shape)[names.index("expert")]
    remote = sum(int(np.sum(ids[dv] // (e // ep) != coord[dv])) for dv in range(n_dev))
    assert m["bytes_moved"] == 2 * remote * d * itemsize
  else:
    assert dropped > 0   # skewed routing overflows some experts: the drop rule is exercised
    cap = reference.capacity(32 // n_dev, k, e, capacity_factor)
    assert m["bytes_moved"] == n_dev * 2 * (ep - 1) * (e // ep) * cap * d * itemsize
