"""grouped_matmul against lax.ragged_dot and NumPy: values, gradients, the tile plan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.model import grouped_matmul as gmm


def _case(m=70, k=24, n=40, g=5, seed=0, sizes=None, dtype=jnp.float32):
  kx, kw, ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  lhs = jax.random.normal(kx, (m, k), jnp.float32).astype(dtype)
  rhs = jax.random.normal(kw, (g, k, n), jnp.float32).astype(dtype)
  if sizes is None:
    cut = np.sort(np.asarray(jax.random.randint(ks, (g - 1,), 0, m - 6)))
    sizes = np.diff(np.concatenate([[0], cut, [m - 6]]))      # sum = m - 6: a tail of 6 rows
  return lhs, rhs, jnp.asarray(sizes, jnp.int32)


def _np_grouped(lhs, rhs, sizes):
  lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
  out = np.zeros((lhs.shape[0], rhs.shape[2]))
  start = 0
  for g, c in enumerate(np.asarray(sizes)):
    out[start:start + c] = lhs[start:start + c] @ rhs[g]
    start += c
  return out


@pytest.mark.parametrize("tile", [1, 4, 8, 64])
def test_plan_places_every_row_once_group_by_group(tile):
  ids = jnp.asarray([3, 0, 0, 9, 2, 3, 3, 0, 2, 2, 2, 2, 2], jnp.int32)   # 9: no group
  p = gmm.plan(ids, 4, tile)
  s = p.num_tiles * tile
  assert p.num_tiles == gmm.num_tiles(13, 4, tile)
  slot_of_row, row_of_slot = np.asarray(p.slot_of_row), np.asarray(p.row_of_slot)
  tile_group = np.asarray(p.tile_group)
  assert slot_of_row[3] == s                                   # the row in no group has no slot
  for r in range(13):
    if r != 3:
      assert row_of_slot[slot_of_row[r]] == r                  # inverse maps agree
      assert tile_group[slot_of_row[r] // tile] == int(ids[r])
  assert sorted(row_of_slot[row_of_slot < 13].tolist()) == [r for r in range(13) if r != 3]
  # Rows of one group keep their order.
  for grp in range(4):
    rows = [r for r in range(13) if int(ids[r]) == grp]
    assert list(slot_of_row[rows]) == sorted(slot_of_row[rows])


def test_choose_tile_is_a_power_of_two_bounded_by_half_the_mean_group():
  assert gmm.choose_tile(512, 8) == 32
  assert gmm.choose_tile(10, 8) == 8
  assert gmm.choose_tile(1 << 20, 8) == 128


@pytest.mark.parametrize("tile", [4, 16, 128])
def test_equals_ragged_dot_and_numpy_f32(tile):
  lhs, rhs, sizes = _case()
  got = gmm.grouped_matmul(lhs, rhs, sizes, tile=tile)
  np.testing.assert_allclose(np.asarray(got), _np_grouped(lhs, rhs, sizes), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jax.lax.ragged_dot(lhs, rhs, sizes)),
                             atol=1e-4, rtol=1e-5)
  assert np.all(np.asarray(got)[-6:] == 0)                     # rows past the groups


@pytest.mark.parametrize("sizes", [None, [0, 64, 0, 0, 0], [13, 0, 20, 0, 31]])
def test_gradients_equal_ragged_dot(sizes):
  lhs, rhs, gs = _case(m=64 if sizes else 70, sizes=sizes)
  probe = jax.random.normal(jax.random.PRNGKey(7), (lhs.shape[0], rhs.shape[2]))

  def loss(f):
    return lambda a, b: jnp.sum(jnp.sin(f(a, b)) * probe)

  ours = jax.grad(loss(lambda a, b: gmm.grouped_matmul(a, b, gs, tile=8)), (0, 1))(lhs, rhs)
  ref = jax.grad(loss(lambda a, b: jax.lax.ragged_dot(a, b, gs)), (0, 1))(lhs, rhs)
  for o, r in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), atol=1e-4, rtol=1e-4)


def test_bf16_close_to_f32_reference_and_jits():
  lhs, rhs, sizes = _case(dtype=jnp.bfloat16)
  got = jax.jit(lambda a, b: gmm.grouped_matmul(a, b, sizes, tile=16))(lhs, rhs)
  assert got.dtype == jnp.bfloat16
  ref = _np_grouped(lhs.astype(jnp.float32), rhs.astype(jnp.float32), sizes)
  np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=0.05 * np.abs(ref).max())
  dw = jax.grad(lambda b: jnp.sum(gmm.grouped_matmul(lhs, b, sizes).astype(jnp.float32)))(rhs)
  dw_ref = jax.grad(lambda b: jnp.sum(jax.lax.ragged_dot(
      lhs.astype(jnp.float32), b, sizes)))(rhs.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(dw_ref),
                             atol=0.02 * np.abs(np.asarray(dw_ref)).max())


def test_take_rows_gradient_is_the_gather_transpose():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  idx = jnp.asarray([4, 0, 5, 4, 2, 5], jnp.int32)              # 5 = no row (zeros)
  inv = jnp.asarray([[1, 6], [6, 6], [4, 6], [6, 6], [0, 3]], jnp.int32)   # 6 = no output row
  probe = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
  ours = jax.grad(lambda x: jnp.sum(gmm.take_rows(x, idx, inv) * probe))(x)
  ref = jax.grad(lambda x: jnp.sum(jnp.take(x, idx, axis=0, mode="fill", fill_value=0) * probe))(x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6)


def test_bad_shapes_are_named():
  lhs, rhs, sizes = _case()
  with pytest.raises(ValueError, match="disagree on K"):
    gmm.grouped_matmul(lhs[:, :5], rhs, sizes)
  with pytest.raises(ValueError, match="group_sizes shape"):
    gmm.grouped_matmul(lhs, rhs, sizes[:3])
  with pytest.raises(ValueError, match="must be"):
    gmm.tiled_dot(jnp.zeros((2, 4, 23)), rhs, jnp.zeros((2,), jnp.int32))


def test_tiled_dot_casts_an_f32_weight_like_a_bf16_one():
  """An f32 w is cast to x's bf16 inside: values and dx equal those of the pre-cast weight,
  and dw comes back in f32 unrounded (the pre-cast weight's is rounded to bf16)."""
  lhs, rhs, _ = _case(m=32, dtype=jnp.float32)
  x = lhs.reshape(4, 8, 24).astype(jnp.bfloat16)
  tg = jnp.asarray([0, 0, 3, 4], jnp.int32)
  probe = jax.random.normal(jax.random.PRNGKey(5), (4, 8, 40))

  def loss(a, b):
    return jnp.sum(gmm.tiled_dot(a, b, tg, jnp.float32) * probe)

  v32, (dx32, dw32) = jax.value_and_grad(loss, (0, 1))(x, rhs)
  v16, (dx16, dw16) = jax.value_and_grad(loss, (0, 1))(x, rhs.astype(jnp.bfloat16))
  assert dw32.dtype == jnp.float32 and dw16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(v32), np.asarray(v16))
  np.testing.assert_array_equal(np.asarray(dx32, np.float32), np.asarray(dx16, np.float32))
  np.testing.assert_array_equal(np.asarray(dw32.astype(jnp.bfloat16), np.float32),
                                np.asarray(dw16, np.float32))
  assert np.all(np.asarray(dw32)[[1, 2]] == 0)                 # groups no tile uses
