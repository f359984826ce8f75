"""Checkpoints that prove themselves, the divergence guard and the spike detector, on a tiny
stand-in model (a bigram-style LM defined here) so every case runs in seconds.

Damage is done the way disks and people do it: bytes flipped inside an Orbax array file, a
file truncated or deleted, hostile values saved with valid checksums. The references are
the states the same run had in memory at each step.
"""

import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gemini.train import checkpoint as ckpt_lib
from gemini.train.metrics import read_metrics
from gemini.train.train_config import TrainConfig
from gemini.train.trainer import DivergenceError, ModelFns, Trainer
from gemini.train.data_shards import DataShards
from gemini.train.synthetic import SyntheticLoader

V, D = 32, 16
POISON = V - 1     # A batch made only of this token makes the stand-in's loss NaN.


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"embed": {"tokens": jax.random.normal(k1, (V, D)) * 0.1},
          "w": jax.random.normal(k2, (D, D)) * 0.1}


def _loss(mesh):
  del mesh
  def loss_fn(params, batch, rng):
    del rng
    x = params["embed"]["tokens"][batch["tokens"]]
    logits = jnp.tanh(x @ params["w"]) @ params["embed"]["tokens"].T
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    poisoned = jnp.all(batch["tokens"] == POISON)
    return jnp.where(poisoned, jnp.nan, loss), {}
  return loss_fn


def _model():
  return ModelFns(init=_init, make_loss=_loss,
                  param_shardings=lambda p, mesh: jax.tree.map(
                      lambda _: NamedSharding(mesh, P()), p),
                  batch_sharding=lambda mesh, shape: NamedSharding(mesh, P()),
                  flops_per_token=1.0, decay_mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p),
                  vocab_size=V)


class Loader:
  """Batch i: token t+1 = (3t + 1) mod V from a seeded start; batches in `poison` are all
  POISON; batches in `noise` have random targets (a loss spike once the model has learnt)."""

  def __init__(self, poison=(), noise=(), bad_id=None):
    self.i, self.poison, self.noise, self.bad_id = 0, set(poison), set(noise), bad_id

  def next(self):
    rng = np.random.default_rng(self.i)
    toks = [rng.integers(0, V - 1, size=(4, 1))]
    for _ in range(8):
      toks.append((toks[-1] * 3 + 1) % (V - 1))
    toks = np.concatenate(toks, axis=1).astype(np.int32)
    self.i += 1
    b = {"tokens": toks[:, :-1], "targets": toks[:, 1:],
         "segment_ids": np.ones((4, 8), np.int32),
         "positions": np.broadcast_to(np.arange(8, dtype=np.int32), (4, 8)).copy()}
    if self.i in self.poison:
      b["tokens"] = np.full((4, 8), POISON, np.int32)
    if self.i in self.noise:
      b["targets"] = rng.integers(0, V, size=(4, 8)).astype(np.int32)
    if self.bad_id is not None:
      b["tokens"][1, 3] = self.bad_id
    return b

  def state(self):
    return {"i": self.i}

  def restore(self, state):
    self.i = state["i"]


def _mesh():
  return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _tc(**kw):
  base = dict(steps=8, batch_size=4, seq_len=8, lr=3e-2, warmup_steps=2, log_every=0,
              checkpoint_every=2, keep_checkpoints=2)
  base.update(kw)
  return TrainConfig(**base)


def _run(workdir, tc, loader=None, log=None, keep_states=None):
  t = Trainer(_model(), tc, _mesh(), loader or Loader(), str(workdir),
              log=log or (lambda s: None))
  on_step = None
  if keep_states is not None:
    on_step = lambda tr: keep_states.__setitem__(tr.step, jax.device_get(tr.state))
  t.run(on_step=on_step)
  t.close()
  return t


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _largest_array_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
  return max(files, key=os.path.getsize)


def _flip(path, offset_frac=0.5, n=16):
  """XORs n bytes at each fraction in offset_frac (one float or several) of the file."""
  b = bytearray(open(path, "rb").read())
  for frac in ([offset_frac] if isinstance(offset_frac, float) else offset_frac):
    at = int(len(b) * frac)
    for i in range(at, min(at + n, len(b))):
      b[i] ^= 0xA5
  open(path, "wb").write(bytes(b))


@pytest.mark.parametrize("with_file_record", [True, False])
def test_flipped_array_bytes_are_caught_and_the_older_step_restored(tmp_path, capfd,
                                                                    with_file_record):
  states = {}
  _run(tmp_path, _tc(), keep_states=states)
  step_dir = os.path.join(tmp_path, "checkpoints", "8")
  # Several places: an OCDBT data file can hold bytes no read touches (a superseded B-tree
  # node), and one flip landing there alone is rightly harmless (seen 1 run in 4).
  _flip(_largest_array_file(step_dir), [(k + 0.5) / 8 for k in range(8)])
  if not with_file_record:   # Then only the per-array CRC-32C can catch it.
    os.remove(os.path.join(step_dir, ckpt_lib.FILES))
  logs = []
  t = Trainer(_model(), _tc(), _mesh(), Loader(), str(tmp_path), log=logs.append)
  assert t.init_or_restore() == 6
  _equal(t.state, states[6])
  assert t.loader.i == 6
  msg = "\n".join(logs)
  # A flip in array data fails its CRC-32C; one in a live B-tree node fails Orbax's read.
  assert "checkpoint step 8" in msg and ("CRC-32C" in msg or "Orbax could not read" in msg)
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints.rejected", "8"))
  t.close()
  err = capfd.readouterr()
  assert "Traceback" not in err.err + err.out


@pytest.mark.parametrize("damage", ["truncate", "delete", "metadata", "empty"])
def test_damaged_newest_step_gives_one_paragraph_and_falls_back(tmp_path, capfd, damage):
  states = {}
  _run(tmp_path, _tc(), keep_states=states)
  step_dir = os.path.join(tmp_path, "checkpoints", "8")
  target = _largest_array_file(step_dir)
  if damage == "truncate":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 3)
  elif damage == "delete":
    os.remove(target)
  elif damage == "metadata":
    _flip(os.path.join(step_dir, "state", "_METADATA"), 0.3, 4)
  else:
    for entry in os.listdir(step_dir):
      p = os.path.join(step_dir, entry)
      (os.remove if os.path.isfile(p) else __import__("shutil").rmtree)(p)
  capfd.readouterr()
  logs = []
  t = Trainer(_model(), _tc(), _mesh(), Loader(), str(tmp_path), log=logs.append)
  assert t.init_or_restore() == 6
  _equal(t.state, states[6])
  t.close()
  out = capfd.readouterr()
  assert "Traceback" not in out.err + out.out
  assert "Event loop is closed" not in out.err + out.out
  skipped = [l for l in logs if "is skipped" in l]
  assert len(skipped) == 1 and "checkpoint step 8" in skipped[0], logs
  if damage in ("truncate", "delete"):
    assert os.path.relpath(target, step_dir) in skipped[0]


def test_retention_keeps_the_newest_verified_step_whatever_keep_is(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"), keep=1, async_save=False)
  state = {"x": jnp.arange(4.0)}
  ckpt.save(1, state, {"loss": 1.0})
  ckpt.wait()
  assert ckpt.verified == {1}
  # Step 2 is written but its read-back fails (bytes altered between the write and the check):
  # step 1 must survive although keep=1.
  ckpt.save(2, state, {"loss": 1.0})
  ckpt._mngr.wait_until_finished()
  _flip(_largest_array_file(ckpt.step_dir(2)), 0.0, 8)
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2] and ckpt.verified == {1}
  ckpt.save(3, state, {"loss": 1.0})
  ckpt.wait()
  assert ckpt.all_steps() == [3]
  with pytest.raises(ckpt_lib.CheckpointError, match="not finite"):
    ckpt.save(4, state, {"loss": float("nan")})
  ckpt.close()


def test_hostile_but_checksum_valid_state_stops_the_run_keeping_checkpoints(tmp_path):
  """A checkpoint whose Adam moment is -2.6e28 (checksums valid): the run stops with
  DivergenceError at the next step and nothing on disk changes."""
  _run(tmp_path, _tc(steps=4))
  t = Trainer(_model(), _tc(steps=8), _mesh(), Loader(), str(tmp_path), log=lambda s: None)
  t.init_or_restore()
  state = jax.tree.map(lambda x: x, t.state)
  state["opt_state"] = jax.tree.map(
      lambda x: jnp.full_like(x, -2.6e28) if x.ndim == 2 else x, state["opt_state"])
  t.ckpt.save(5, state, {"loader": {"i": 5}, "step": 5, "loss": 1.0})
  t.ckpt.wait()
  t.close()
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(DivergenceError, match="diverged at step 6"):
    _run(tmp_path, _tc(steps=8))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_nan_loss_stops_before_anything_is_saved(tmp_path):
  states = {}
  with pytest.raises(DivergenceError, match=r"step 5: loss=nan.*on_divergence=rollback"):
    _run(tmp_path, _tc(), Loader(poison={5}), keep_states=states)
  assert max(states) == 4
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  events = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r.get("event")]
  assert events[-1]["event"] == "divergence" and events[-1]["step"] == 5


def test_rollback_restores_last_good_and_skips_the_offending_batches(tmp_path):
  t = _run(tmp_path, _tc(on_divergence="rollback"), Loader(poison={7}))
  assert t.step == 8 and t.rollbacks == 1
  events = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r.get("event")]
  rb = [e for e in events if e["event"] == "rollback"]
  assert rb == [dict(rb[0], step=6, at_step=7, skipped_batches=[7])]
  # The rolled-back run equals a run that restored step 6 and never saw batch 7.
  ref = Trainer(_model(), _tc(), _mesh(), Loader(), None, log=lambda s: None)
  ref.run(until=6)
  ref.loader.next()   # Skip batch 7.
  ref.run()
  _equal(t.state, ref.state)
  assert all(math.isfinite(r["loss"]) for r in read_metrics(str(tmp_path / "metrics.jsonl"))
             if "loss" in r and "event" not in r)


def test_loss_spike_is_reported(tmp_path):
  logs = []
  tc = _tc(steps=40, checkpoint_every=0, spike_window=20, spike_zscore=6.0, log_every=10)
  _run(tmp_path, tc, Loader(noise={35}), log=logs.append)
  spikes = [r for r in read_metrics(str(tmp_path / "metrics.jsonl"))
            if r.get("event") == "loss_spike"]
  assert [s["step"] for s in spikes] == [35] and spikes[0]["z"] > 6
  assert any("loss spike" in l and "step 35" in l for l in logs), logs


def test_token_id_outside_the_vocabulary_is_refused_before_the_step(tmp_path):
  t = Trainer(_model(), _tc(checkpoint_every=0), _mesh(), Loader(bad_id=V + 7), None,
              log=lambda s: None)
  with pytest.raises(ValueError, match=r"tokens\[1, 3\] = 39 is outside the model's "
                                       r"vocabulary \[0, 32\)"):
    t.run()


@pytest.mark.parametrize("field,value", [
    ("lr", float("nan")), ("lr", 0.0), ("lr", -1e-3), ("lr", float("inf")),
    ("eps", float("nan")), ("weight_decay", float("nan")), ("clip_norm", -1.0),
    ("b2", 1.0), ("min_lr_ratio", float("nan")), ("warmup_steps", -1),
    ("on_divergence", "ignore")])
def test_non_finite_or_non_positive_hyperparameters_are_refused(field, value):
  with pytest.raises(ValueError, match=f"--{field}="):
    _tc(**{field: value})


def test_data_shards_read_separately_equal_the_whole_batch():
  """What two processes read (shard 0, shard 1) is exactly what one process reads with
  data_shards=2; with one shard the stream is the plain loader's."""
  make = lambda j, n, rows: SyntheticLoader(64, rows, 16, seed=3, shard=j, num_shards=n)
  both = DataShards(make, 8, 16, 2, [0, 1])
  parts = [DataShards(make, 8, 16, 2, [j]) for j in (0, 1)]
  for _ in range(3):
    whole, p0, p1 = both.next(), parts[0].next(), parts[1].next()
    for k in whole:
      np.testing.assert_array_equal(whole[k][:4], p0[k][:4])
      np.testing.assert_array_equal(whole[k][4:], p1[k][4:])
      assert not p0[k][4:].any() and not p1[k][:4].any()
    assert not np.array_equal(whole["tokens"][:4], whole["tokens"][4:])
  state = both.state()
  parts[1].restore(state)
  np.testing.assert_array_equal(both.next()["tokens"][4:], parts[1].next()["tokens"][4:])
  one = DataShards(make, 8, 16, 1, [0])
  np.testing.assert_array_equal(one.next()["tokens"],
                                SyntheticLoader(64, 8, 16, seed=3).next()["tokens"])
