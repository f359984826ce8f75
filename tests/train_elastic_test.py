"""End to end (8 fake devices, the real decoder): slice elasticity.

A data=2 x fsdp=4 run is told slice 1 (devices 4-7) is gone at step 7: the mesh is rebuilt
as data=1 x fsdp=4 from the remaining devices, the state is resharded from the in-memory
replica (refreshed every 2 steps, its copies live on the other slice), and training
continues with the same global batch. The loss curve matches an unfailed run within f32
reduction-order noise, and the run completes every step.
"""

import jax
import pytest

from gemini import config_flags, sharding
from gemini.train.model_fns import gemini_model
from gemini.train.synthetic import SyntheticLoader
from gemini.train.train_config import TrainConfig
from gemini.train.trainer import Trainer, use_compilation_cache
from gemini.train.resilience.elastic import slice_devices

TINY = {"d_model": "64", "n_layers": "2", "n_heads": "2", "head_dim": "32", "d_ff": "128",
        "vocab_size": "256"}

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 devices")
# Identical programs recur across trainers and test targets: reuse their compilations.
use_compilation_cache("/tmp/gemini-jax-cache")


def _run(tc, lose_at=None):
  cfg = config_flags.resolve("nano_tiny", TINY)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  t = Trainer(gemini_model(cfg, tc.seq_len), tc, mesh,
              SyntheticLoader(cfg.vocab_size, tc.batch_size, tc.seq_len), None, log=print)
  t.init_or_restore()
  losses = {}
  while t.step < tc.steps:
    step = t.step + 1
    losses[step] = t.train_step()["loss"]
    if t.step == lose_at and t.mesh.devices.shape[0] == 2:
      t.lose_devices(slice_devices(t.mesh, 1))
  return t, losses


def test_lose_a_slice_and_continue():
  tc = TrainConfig(steps=16, batch_size=8, seq_len=32, replica_every=2, checkpoint_every=0,
                   log_every=0, warmup_steps=2, lr=1e-2)
  ref, ref_losses = _run(tc)
  t, losses = _run(tc, lose_at=7)
  assert dict(t.mesh.shape) == {"data": 1, "fsdp": 4}
  assert {d.id for d in t.mesh.devices.flat} == {0, 1, 2, 3}
  assert all(d.id < 4 for leaf in jax.tree.leaves(t.state) for d in leaf.sharding.device_set)
  (failure,) = t.goodput.report()["failures"]
  assert failure["restored_step"] == 6          # Rolled back to the replica, recomputed step 7.
  steps = sorted(ref_losses)
  diffs = [abs(losses[s] - ref_losses[s]) for s in steps]
  print("max |loss - unfailed loss|:", max(diffs))
  assert max(diffs) < 1e-3 * max(ref_losses.values())
  assert losses[16] < losses[1] - 0.1            # Still learning after the loss of a slice.
