"""moe_ffn on one device (gmm kernels, interpret mode) against the dense one-hot reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas.moe import moe_testlib as lib
from pallas.moe import ops


@pytest.mark.parametrize("mode,k,activation",
                         [("dropless", 1, "silu"), ("capacity", 2, "gelu")])
def test_single_device_matches_dense(mode, k, activation):
  prob = lib.problem(seed=k, k=k, skew=True)
  m = lib.compare(prob, mode=mode, activation=activation, capacity_factor=1.0)
  tpe, dropped = lib.expected_metrics(prob, mode, 1.0, 1)
  np.testing.assert_array_equal(m["tokens_per_expert"], tpe)
  assert m["tokens_dropped"] == dropped
  assert m["bytes_moved"] == 0
  if mode == "capacity":
    assert dropped > 0   # the skewed routing really overflows some experts


def test_bf16_single_device():
  prob = lib.problem(seed=3, k=2, dtype=jnp.bfloat16)
  lib.compare(prob, mode="dropless", tol=2e-2)


def test_bad_inputs_name_the_field():
  x, ids, gates, wg, wu, wd = lib.problem(k=2)
  with pytest.raises(ValueError, match="gates shape"):
    ops.moe_ffn(x, ids, gates[:, :1], wg, wu, wd)
  with pytest.raises(ValueError, match="mode='topk'"):
    ops.moe_ffn(x, ids, gates, wg, wu, wd, mode="topk")
  with pytest.raises(ValueError, match="w_down"):
    ops.moe_ffn(x, ids, gates, wg, wu, wd[:, :, :64])
  with pytest.raises(ValueError, match="activation"):
    ops.moe_ffn(x, ids, gates, wg, wu, wd, activation="relu")
