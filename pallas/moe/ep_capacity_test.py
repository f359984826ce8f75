"""Expert-parallel fixed-capacity moe_ffn (lax.all_to_all) on 2/4/8 fake devices, alone and
with data/fsdp axes, equals the dense reference with the same per-shard drop rule
(capacity groups = token shards): outputs, gradients, tokens dropped, bytes moved."""

import pytest

from pallas.moe import moe_testlib as lib


@pytest.mark.parametrize("shape,names,k", [
    ((8,), ("expert",), 1),
    ((2, 4), ("data", "expert"), 2),
    ((2, 2, 2), ("data", "fsdp", "expert"), 1),
])
def test_ep_capacity_matches_dense(shape, names, k):
  lib.check_ep(shape, names, k, "capacity", capacity_factor=1.0)
