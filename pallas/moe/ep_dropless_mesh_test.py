"""Expert-parallel dropless moe_ffn combined with data / fsdp token sharding (4 and 8 fake
devices) equals the single-device dense reference: outputs, gradients, metrics."""

import pytest

from pallas.moe import moe_testlib as lib


@pytest.mark.parametrize("shape,names,k", [
    ((2, 2), ("data", "expert"), 1),
    ((2, 2, 2), ("data", "fsdp", "expert"), 2),
])
def test_ep_dropless_with_data_axes(shape, names, k):
  lib.check_ep(shape, names, k, "dropless")
