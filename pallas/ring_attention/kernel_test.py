"""Single-device flash attention (Pallas, interpret mode on CPU) against the dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas.ring_attention import ops, reference, testutil

# (causal, H, K, seq, block, packed, media, dtype): each row covers several features at once
# to keep the number of interpret-mode compilations small.
CASES = [
    (True, 4, 2, 100, 32, True, True, jnp.float32),    # GQA, packed, media, S not a multiple
    (False, 4, 1, 64, 32, False, False, jnp.float32),  # MQA, non-causal
    (True, 4, 2, 72, 16, True, False, jnp.bfloat16),   # GQA, packed, padded, bf16
    (True, 2, 1, 64, 8, False, True, jnp.float32),     # media items spanning many blocks
]


@pytest.mark.parametrize("causal,h,kh,s,block,packed,media,dtype", CASES)
def test_flash_matches_reference(causal, h, kh, s, block, packed, media, dtype):
  fn = lambda q, k, v, seg, bid: ops.flash_attention(
      q, k, v, seg, bid, causal=causal, block_q=block, block_k=block, interpret=True)
  testutil.check_against_reference(fn, 2 if packed else 1, s, h, kh, 32, dtype, packed, causal,
                                   media=media)


def test_item_spanning_a_block_boundary_unskips_the_future_block():
  # One item over tokens 10..21 with 16-token blocks: block pair (q 0, k 1) lies above the
  # causal diagonal, yet rows 10..15 must see keys 16..21.
  q, k, v, _, _ = testutil.inputs(1, 32, 2, 1, 16, jnp.float32, packed=False)
  bid = jnp.zeros((1, 32), jnp.int32).at[:, 10:22].set(1)
  out = ops.flash_attention(q, k, v, None, bid, block_q=16, block_k=16, interpret=True)
  ref = reference.attention(q, k, v, None, bid)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  causal_only = reference.attention(q, k, v)
  assert np.abs(np.asarray(ref - causal_only)[:, 10:16]).min() > 0  # the future keys matter


def test_padding_rows_are_zero_and_sm_scale_is_used():
  q, k, v, _, seg = testutil.inputs(1, 48, 2, 1, 16, jnp.float32, packed=True)
  out = ops.flash_attention(q, k, v, seg, sm_scale=0.3, block_q=16, block_k=16, interpret=True)
  ref = reference.attention(q, k, v, seg, sm_scale=0.3)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  pad = np.asarray(seg) == 0
  assert pad.any() and np.all(np.asarray(out)[pad] == 0)


def test_fully_masked_blocks_are_skipped_not_just_masked():
  # Poison the keys of a block no query may see (future of every query in block 0, causal):
  # NaNs there would propagate through a matmul if the block were computed. Media items in
  # block 0 and in the poisoned blocks (ids 1 and 2) must not unskip them.
  q, k, v, _, _ = testutil.inputs(1, 64, 2, 1, 16, jnp.float32, packed=False)
  bid = jnp.zeros((1, 64), jnp.int32).at[:, 3:9].set(1).at[:, 20:40].set(2)
  out = ops.flash_attention(q[:, :16], k[:, :16], v[:, :16], None, bid[:, :16], block_q=16,
                            block_k=16, interpret=True)
  k_bad = k.at[:, 16:].set(jnp.nan)
  v_bad = v.at[:, 16:].set(jnp.nan)
  full = ops.flash_attention(q, k_bad, v_bad, None, bid, block_q=16, block_k=16, interpret=True)
  np.testing.assert_allclose(full[:, :16], out, atol=1e-6)


def test_bad_shapes_are_named():
  q = jnp.zeros((1, 8, 3, 16))
  k = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match="n_heads=3"):
    ops.flash_attention(q, k, k, interpret=True)
  with pytest.raises(ValueError, match="segment_ids shape"):
    ops.flash_attention(q, q, q, jnp.zeros((1, 7), jnp.int32), interpret=True)
  with pytest.raises(ValueError, match="bidir_ids shape"):
    ops.flash_attention(q, q, q, None, jnp.zeros((2, 8), jnp.int32), interpret=True)
