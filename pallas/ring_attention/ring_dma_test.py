"""Remote-DMA ring kernel in TPU interpret mode (race detection on, DMAs executed on wait).

Run with 8 host devices (BUILD: devices=8). Every call is followed by block_until_ready
(testutil.value_and_grads and the helpers below do so): dispatching more work while an
interpret-mode collective kernel runs can deadlock.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax.experimental.pallas import tpu as pltpu

from pallas.ring_attention import ops, reference, testutil


@pytest.fixture(autouse=True)
def _fresh_interpreter():
  pltpu.reset_tpu_interpret_mode_state()
  yield
  pltpu.reset_tpu_interpret_mode_state()


def _params():
  return pltpu.InterpretParams(detect_races=True, dma_execution_mode="on_wait")


def _mesh(n):
  if len(jax.devices()) < n:
    pytest.fail(f"needs {n} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  return jax.make_mesh((n,), ("context",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def _no_races():
  state = tpu_interpret.races
  assert state is not None, "race detection did not run"
  assert not state.races_found, "TPU interpret mode found a data race in the ring kernel"


@pytest.mark.parametrize("n,causal,kh,media", [(1, True, 1, False), (2, False, 2, False),
                                               (8, True, 1, True)])
def test_dma_ring_forward_matches_reference(n, causal, kh, media):
  mesh = _mesh(n)
  q, k, v, _, seg = testutil.inputs(1, 128, 2, kh, 16, jnp.float32, packed=True)
  bid = testutil.media_ids(seg, 1, 128) if media else None
  fn = jax.jit(lambda q, k, v: ops.ring_attention(
      q, k, v, seg, bid, mesh=mesh, causal=causal, impl="dma", block_q=16, block_k=16,
      interpret=_params()))
  out = jax.block_until_ready(fn(q, k, v))
  _no_races()
  ref = reference.attention(q, k, v, seg, bid, causal=causal)
  np.testing.assert_allclose(out, ref, atol=2e-5)


def test_dma_ring_gradients_on_four_devices():
  mesh = _mesh(4)
  fn = lambda q, k, v, seg, bid: ops.ring_attention(
      q, k, v, seg, bid, mesh=mesh, impl="dma", block_q=16, block_k=16, interpret=_params())
  testutil.check_against_reference(fn, 1, 100, 4, 2, 16, jnp.float32, True, True, media=True)
  _no_races()
