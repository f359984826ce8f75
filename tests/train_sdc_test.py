"""End to end (8 fake devices, the real decoder): a bit flip injected into one device's
gradient computation is caught by the deterministic-replay SDC check, the faulty device
is named, and the corrupted update is not applied; healthy check steps pass and apply.
"""

import jax
import numpy as np
import pytest

from gemini import config_flags, sharding
from gemini.train.model_fns import gemini_model
from gemini.train.synthetic import SyntheticLoader
from gemini.train.train_config import TrainConfig
from gemini.train.trainer import Trainer, use_compilation_cache
from gemini.train.step import step_rng

TINY = {"d_model": "64", "n_layers": "2", "n_heads": "2", "head_dim": "32", "d_ff": "128",
        "vocab_size": "256"}

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 devices")
# Identical programs recur across trainers and test targets: reuse their compilations.
use_compilation_cache("/tmp/gemini-jax-cache")


def _trainer(tc):
  cfg = config_flags.resolve("nano_tiny", TINY)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  return Trainer(gemini_model(cfg, tc.seq_len), tc, mesh,
                 SyntheticLoader(cfg.vocab_size, tc.batch_size, tc.seq_len), None,
                 log=lambda s: None)


def flip_bit(device_id, leaf_index=0, bit=20):
  """Fault hook: flips one bit of the gradient row computed on physical device `device_id`."""
  def inject(stacked):
    leaves, treedef = jax.tree.flatten(stacked)
    x = leaves[leaf_index]
    shards = []
    for s in x.addressable_shards:
      data = s.data
      if s.device.id == device_id:
        host = np.array(data, dtype=np.float32).view(np.uint32).copy()
        host.reshape(-1)[host.size // 2] ^= np.uint32(1 << bit)
        data = jax.device_put(host.view(np.float32).astype(x.dtype), s.device)
      shards.append(data)
    leaves[leaf_index] = jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)
    return jax.tree.unflatten(treedef, leaves)
  return inject


def test_bit_flip_detected_named_and_not_applied():
  tc = TrainConfig(steps=6, batch_size=8, seq_len=32, sdc_every=2, checkpoint_every=0,
                   log_every=0, warmup_steps=1)
  t = _trainer(tc)
  t.init_or_restore()
  t.train_step()
  t.train_step()                     # Step 2: a healthy check that applies its update.
  assert t.sdc_results[-1].ok and t.step == 2
  t.train_step()
  before = jax.device_get(t.state)
  t.sdc_inject = flip_bit(device_id=6)
  t.train_step()                     # Step 4 check: device 6 corrupts its gradient row.
  bad = t.sdc_results[-1]
  assert not bad.ok
  assert bad.faulty_devices == [6]
  assert len(bad.mismatched_shards) == 2   # Device 6's shard in each of the two passes.
  assert t.step == 3                       # The update was refused ...
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(t.state))):
    np.testing.assert_array_equal(x, y)    # ... and the state is untouched.
  t.sdc_inject = None
  t.train_step()
  assert t.sdc_results[-1].ok and t.step == 4


def test_every_device_can_be_named():
  tc = TrainConfig(steps=2, batch_size=8, seq_len=32, sdc_every=1, checkpoint_every=0,
                   log_every=0)
  t = _trainer(tc)
  t.init_or_restore()
  batch = t.global_batch(t.loader.next())
  for dev in (0, 3, 7):
    res = t.sdc.check(0, t.state["params"], batch, step_rng(t.state),
                      inject=flip_bit(dev, leaf_index=3, bit=1))
    assert not res.ok and res.faulty_devices == [dev]
