"""The ragged remote-DMA exchange kernel (TPU interpret mode, race detection) against a
NumPy model of the documented receive layout, including the worst case of the bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from pallas.moe import all_to_all as a2a

D = 128


def _expected_receive(ids_sorted, xs, p, el):
  """NumPy: owner's buffer = rows grouped by local expert, then by source device."""
  n = ids_sorted.shape[1]
  out = np.zeros((p, p * n, D), np.float32)
  for owner in range(p):
    rows = [xs[s][i] for e in range(owner * el, (owner + 1) * el) for s in range(p)
            for i in range(n) if ids_sorted[s][i] == e]
    if rows:
      out[owner, :len(rows)] = np.stack(rows)
  return out


@pytest.mark.parametrize("p,e,n,skew", [(4, 8, 6, False), (2, 4, 5, True)])
def test_exchange_layout_and_roundtrip(p, e, n, skew):
  pltpu.reset_tpu_interpret_mode_state()
  params = pltpu.InterpretParams(detect_races=True, dma_execution_mode="on_wait")
  el = e // p
  mesh = jax.make_mesh((p,), ("expert",), devices=jax.devices()[:p],
                       axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(p)
  # skew=True: every row of every device goes to device 0's experts (the buffer bound P*N).
  ids = rng.integers(0, el if skew else e, size=(p, n))
  ids_sorted = np.sort(ids, axis=1, kind="stable")
  xs = rng.normal(size=(p, n, D)).astype(np.float32)
  counts = np.stack([np.bincount(r, minlength=e) for r in ids_sorted]).astype(np.int32)

  def f(xl, c):
    me = jax.lax.axis_index("expert")
    counts_all = jax.lax.all_gather(c, "expert")
    recv = a2a.ragged_exchange(xl, a2a.dispatch_plan(counts_all, me, el), out_rows=p * n,
                               axis_name="expert", mesh_axes=("expert",), interpret=params)
    total = jnp.sum(a2a.local_group_sizes(counts_all, me, el))
    recv = jnp.where(jnp.arange(p * n)[:, None] < total, recv, 0.0)
    back = a2a.ragged_exchange(recv, a2a.combine_plan(counts_all, me, el), out_rows=n,
                               axis_name="expert", mesh_axes=("expert",), interpret=params)
    return recv, back, a2a.local_group_sizes(counts_all, me, el)

  sm = jax.shard_map(f, mesh=mesh, in_specs=(P("expert"), P("expert")),
                     out_specs=(P("expert"),) * 3, check_vma=False)
  recv, back, gs = jax.jit(sm)(jnp.asarray(xs.reshape(p * n, D)), jnp.asarray(counts.reshape(-1)))
  jax.block_until_ready((recv, back, gs))
  assert not tpu_interpret.races.races_found
  np.testing.assert_array_equal(np.asarray(recv).reshape(p, p * n, D),
                                _expected_receive(ids_sorted, xs, p, el))
  np.testing.assert_array_equal(np.asarray(back).reshape(p, n, D), xs)
  np.testing.assert_array_equal(np.asarray(gs).reshape(p, el), counts.sum(0).reshape(p, el))
  if skew:
    assert int(np.asarray(gs).reshape(p, el)[0].sum()) == p * n   # bound reached exactly


def test_receive_offsets_match_numpy():
  rng = np.random.default_rng(0)
  p, el = 3, 2
  c = rng.integers(0, 5, size=(p, p * el)).astype(np.int32)
  r = np.asarray(a2a.receive_offsets(jnp.asarray(c), el))
  for owner in range(p):
    pos = 0
    for l in range(el):
      for s in range(p):
        assert r[owner, l, s] == pos
        pos += c[s, owner * el + l]


def test_semaphore_budget_error_names_sizes():
  x = jnp.zeros((8, D))
  plan = {k: jnp.zeros((8, 64), jnp.int32) for k in ("src", "size", "dst", "recv")}
  with pytest.raises(ValueError, match="8 peers x 64 local experts"):
    a2a.ragged_exchange(x, plan, out_rows=64, axis_name="expert", mesh_axes=("expert",))
