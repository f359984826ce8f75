"""Expert-parallel dropless moe_ffn over the `expert` axis alone (2, 4, 8 fake devices):
the Pallas remote-DMA exchange runs in TPU interpret mode with race detection; outputs,
gradients and metrics equal the single-device dense reference."""

import pytest

from pallas.moe import moe_testlib as lib


@pytest.mark.parametrize("shape,names,k", [
    ((2,), ("expert",), 2),
    ((4,), ("expert",), 1),
    ((8,), ("expert",), 2),
])
def test_ep_dropless_matches_dense(shape, names, k):
  lib.check_ep(shape, names, k, "dropless")
