"""gmm / tgmm (Pallas, interpret mode) and their custom VJP against jax.lax.ragged_dot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas.moe import gmm as gmm_lib
from pallas.moe import ops
from pallas.moe import reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
TILING = (16, 128, 128)   # small row tiles so groups straddle tiles


def _rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _sizes(rng, e, m, with_tail):
  """Random group sizes with zeros; sum == m, or < m when with_tail."""
  total = m - (5 if with_tail else 0)
  cuts = np.sort(rng.integers(0, total + 1, size=e - 1))
  sizes = np.diff(np.concatenate([[0], cuts, [total]]))
  sizes[rng.choice(e, size=2, replace=False)] = 0   # force some empty groups
  sizes[-1] += total - sizes.sum()
  return jnp.asarray(sizes, jnp.int32)


def _operands(seed, dtype, m=44, k=200, n=136, e=5, with_tail=True):
  rng = np.random.default_rng(seed)
  lhs = jnp.asarray(rng.normal(size=(m, k)), dtype)
  rhs = jnp.asarray(rng.normal(size=(e, k, n)) / np.sqrt(k), dtype)
  return lhs, rhs, _sizes(rng, e, m, with_tail), rng


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("seed,with_tail", [(0, True), (1, False)])
def test_gmm_forward(dtype, seed, with_tail):
  lhs, rhs, gs, _ = _operands(seed, dtype, with_tail=with_tail)
  assert int(jnp.min(gs)) == 0
  out = gmm_lib.gmm(lhs, rhs, gs, tiling=TILING, interpret=True)
  ref = reference.gmm_ref(lhs.astype(jnp.float32), rhs.astype(jnp.float32), gs)
  assert out.dtype == dtype and out.shape == ref.shape
  assert _rel_err(out, ref) < TOL[dtype]
  if with_tail:   # rows past sum(group_sizes) are zero
    assert np.all(np.asarray(out[int(jnp.sum(gs)):]) == 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gmm_transposed_rhs(dtype):
  lhs, rhs, gs, _ = _operands(2, dtype)
  out = gmm_lib.gmm(lhs, jnp.swapaxes(rhs, 1, 2), gs, tiling=TILING, transpose_rhs=True,
                    interpret=True)
  ref = reference.gmm_ref(lhs.astype(jnp.float32), rhs.astype(jnp.float32), gs)
  assert _rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tgmm(dtype):
  lhs, _, gs, rng = _operands(3, dtype)
  g = jnp.asarray(rng.normal(size=(lhs.shape[0], 136)), dtype)
  # Rows past the groups hold NaN: tgmm must ignore them, not multiply them by zero.
  total = int(jnp.sum(gs))
  lhs_nan = lhs.at[total:].set(jnp.nan)
  out = gmm_lib.tgmm(lhs_nan, g, gs, tiling=TILING, interpret=True)
  ref = reference.tgmm_ref(lhs, g, gs, preferred_dtype=jnp.float32)
  assert out.shape == (gs.shape[0], lhs.shape[1], 136)
  assert _rel_err(out, ref) < TOL[dtype]
  empty = np.flatnonzero(np.asarray(gs) == 0)
  assert empty.size and np.all(np.asarray(out)[empty] == 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gmm_gradients(dtype):
  lhs, rhs, gs, rng = _operands(4, dtype, m=40, k=128, n=128, e=4)
  w = jnp.asarray(rng.normal(size=(40, 128)), jnp.float32)

  def loss(fn):
    return lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32) * w)

  got = jax.grad(loss(lambda a, b: ops.gmm(a, b, gs, TILING, False, True)), (0, 1))(lhs, rhs)
  want = jax.grad(loss(lambda a, b: reference.gmm_ref(a, b, gs, preferred_dtype=jnp.float32)),
                  (0, 1))(lhs.astype(jnp.float32), rhs.astype(jnp.float32))
  for g_got, g_want in zip(got, want):
    assert g_got.dtype == dtype
    assert _rel_err(g_got, g_want) < TOL[dtype]


def test_visit_schedule_bound():
  # Every (group, tile) pair is visited once; the static bound tiles_m + e + 1 holds even
  # when every group is empty or everything sits in one group.
  for sizes in ([0, 0, 0], [48, 0, 0], [0, 0, 48], [5, 11, 32], [1, 1, 1]):
    gs = jnp.asarray(sizes, jnp.int32)
    off, gid, tile, num = gmm_lib.make_visits(gs, 48, 16, with_tail=False)
    n = int(num[0])
    pairs = {(int(g), int(t)) for g, t in zip(gid[:n], tile[:n])}
    ends = np.cumsum(sizes)
    starts = ends - np.asarray(sizes)
    want = set()
    for g, (s, e) in enumerate(zip(starts, ends)):
      first = min(s // 16, 2)
      want |= {(g, t) for t in range(first, max(-(-e // 16), first + 1))}
    assert pairs == want and len(pairs) == n <= gid.shape[0]


def test_bad_shapes_raise():
  lhs = jnp.zeros((8, 128))
  with pytest.raises(ValueError, match="disagree on k"):
    gmm_lib.gmm(lhs, jnp.zeros((2, 64, 128)), jnp.zeros((2,), jnp.int32), interpret=True)
  with pytest.raises(ValueError, match="group_sizes shape"):
    gmm_lib.gmm(lhs, jnp.zeros((2, 128, 128)), jnp.zeros((3,), jnp.int32), interpret=True)
