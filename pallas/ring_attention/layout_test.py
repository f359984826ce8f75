"""Sequence layouts: permutations are bijections, and zigzag balances the causal ring."""

import numpy as np
import pytest

from pallas.ring_attention import layout


@pytest.mark.parametrize("name", layout.LAYOUTS)
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_permutation_is_a_bijection_with_inverse(name, n):
  s = 16 * n
  perm = layout.permutation(s, n, name)
  assert sorted(perm.tolist()) == list(range(s))
  x = np.arange(s) * 10
  np.testing.assert_array_equal(x[perm][layout.inverse_permutation(perm)], x)


def test_zigzag_places_one_early_and_one_late_chunk_per_device():
  perm = layout.permutation(16, 4, "zigzag").reshape(4, 4)
  np.testing.assert_array_equal(perm[0], [0, 1, 14, 15])
  np.testing.assert_array_equal(perm[3], [6, 7, 8, 9])


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zigzag_balances_causal_blocks_and_contiguous_does_not(n):
  s, block = 64 * n, 16
  zig = layout.causal_block_work(s, n, block, "zigzag")
  naive = layout.causal_block_work(s, n, block, "contiguous")
  # Same total work for blocks aligned to chunks...
  assert zig.sum() == naive.sum()
  # ...but zigzag gives every device the same count (within one block), while in the naive
  # split device d sees d full L x L off-diagonal tiles plus one triangular diagonal tile
  # (L = local blocks): the last device does ~(2n-1)x the first device's work.
  assert zig.max() - zig.min() <= 1, zig
  nl = s // n // block
  np.testing.assert_array_equal(naive, [d * nl * nl + nl * (nl + 1) // 2 for d in range(n)])
  assert naive.max() >= 2 * naive.min()


def test_bad_lengths_and_names_are_rejected():
  with pytest.raises(ValueError, match="seq_len=30"):
    layout.permutation(30, 4, "zigzag")
  with pytest.raises(ValueError, match="layout='spiral'"):
    layout.permutation(32, 4, "spiral")
