"""Unit tests of the training loop with a tiny stand-in model (defined here, test-only).

The stand-in is a one-matrix bigram-style LM; the loader yields a deterministic token stream
with a learnable structure (token t+1 = (t * 3 + 1) mod V), so the loss must fall.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gemini.train import checkpoint as ckpt_lib
from gemini.train import step as step_lib
from gemini.train.metrics import loss_curve, read_metrics
from gemini.train.optimizer import make_optimizer
from gemini.train.train_config import TrainConfig, parse_mixture_stages
from gemini.train.trainer import ModelFns, Trainer
from gemini.train.optimizer import lr_schedule
from gemini.train.resilience.replicas import InMemoryReplica, RecoveryError

V, D = 32, 16


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"embed": {"tokens": jax.random.normal(k1, (V, D)) * 0.1},
          "w": jax.random.normal(k2, (D, D)) * 0.1, "norm": {"scale": jnp.ones((D,))}}


def _loss(mesh):
  def loss_fn(params, batch, rng):
    del rng
    x = params["embed"]["tokens"][batch["tokens"]] * params["norm"]["scale"]
    logits = jnp.tanh(x @ params["w"]) @ params["embed"]["tokens"].T
    w = (batch["segment_ids"] != 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"ce_loss": loss}
  return loss_fn


def _model():
  return ModelFns(init=_init, make_loss=_loss,
                  param_shardings=lambda p, mesh: jax.tree.map(
                      lambda _: NamedSharding(mesh, P()), p),
                  batch_sharding=lambda mesh, shape: NamedSharding(mesh, P(mesh.axis_names)),
                  flops_per_token=6.0 * (V * D + D * D),
                  decay_mask={"embed": {"tokens": False}, "w": True, "norm": {"scale": False}})


class StreamLoader:
  """Deterministic batches; state() = batch counter."""

  def __init__(self, batch, seq):
    self.batch, self.seq, self.i = batch, seq, 0

  def next(self):
    rng = np.random.default_rng(self.i)
    start = rng.integers(0, V, size=(self.batch, 1))
    toks = [start]
    for _ in range(self.seq):
      toks.append((toks[-1] * 3 + 1) % V)
    toks = np.concatenate(toks, axis=1).astype(np.int32)
    self.i += 1
    return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
            "segment_ids": np.ones((self.batch, self.seq), np.int32),
            "positions": np.broadcast_to(np.arange(self.seq, dtype=np.int32),
                                         (self.batch, self.seq)).copy()}

  def state(self):
    return {"i": self.i}

  def restore(self, state):
    self.i = state["i"]


def _mesh():
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _tc(**kw):
  base = dict(steps=12, batch_size=8, seq_len=8, lr=3e-2, warmup_steps=2, log_every=0,
              checkpoint_every=0)
  base.update(kw)
  return TrainConfig(**base)


def test_loss_falls_and_metrics_written(tmp_path):
  tc = _tc(steps=30, checkpoint_every=10)
  t = Trainer(_model(), tc, _mesh(), StreamLoader(8, 8), str(tmp_path), peak_flops=1e10,
              log=lambda s: None)
  t.run()
  t.close()
  curve = loss_curve(read_metrics(str(tmp_path / "metrics.jsonl")))
  assert [s for s, _ in curve] == list(range(1, 31))
  assert curve[-1][1] < 0.5 * curve[0][1]
  assert os.path.getsize(tmp_path / "loss.png") > 1000
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [10, 20, 30]


def test_grad_accumulation_matches_full_batch():
  params = _init(jax.random.key(1))
  batch = jax.tree.map(jnp.asarray, StreamLoader(8, 8).next())
  key = jax.random.key(0)
  g1, m1 = step_lib.grads_and_metrics(_loss(None), params, batch, key, accum=1)
  g4, m4 = step_lib.grads_and_metrics(_loss(None), params, batch, key, accum=4)
  # Equal token counts per microbatch: the mean of microbatch means is the full mean.
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)


def test_warmup_then_cosine_schedule():
  tc = _tc(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
  s = lr_schedule(tc)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(100)) - 0.1) < 1e-6 and float(s(50)) < float(s(20))


def test_weight_decay_only_on_masked_leaves():
  tc = _tc(weight_decay=0.5, lr=0.1, warmup_steps=0, steps=10, min_lr_ratio=1.0)
  opt = make_optimizer(tc, _model().decay_mask)
  params = _init(jax.random.key(2))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)
  # Zero gradients: AdamW's update is exactly -lr * wd * p where decay applies, 0 elsewhere.
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * params["w"], rtol=1e-6)
  assert not np.any(np.asarray(updates["embed"]["tokens"]))
  assert not np.any(np.asarray(updates["norm"]["scale"]))


def test_checkpoint_restores_exactly_and_ignores_partial(tmp_path):
  tc = _tc(steps=6, checkpoint_every=3)
  a = Trainer(_model(), tc, _mesh(), StreamLoader(8, 8), str(tmp_path / "a"), log=lambda s: None)
  a.run()
  a.close()
  # A half-written checkpoint (temporary dir of a killed save) is never picked.
  os.makedirs(tmp_path / "a" / "checkpoints" / "9.orbax-checkpoint-tmp-1")
  b = Trainer(_model(), tc, _mesh(), StreamLoader(8, 8), str(tmp_path / "a"),
              log=lambda s: None)
  assert b.init_or_restore() == 6
  assert b.loader.i == 6
  for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  b.close()


def test_mixture_stage_parse():
  st = parse_mixture_stages("0:web=3,code=1;5:web=1,code=1")
  assert st == ((0, (("web", 0.75), ("code", 0.25))), (5, (("web", 0.5), ("code", 0.5))))
  tc = _tc(mixture_stages=st)
  assert tc.mixture_at(4) == {"web": 0.75, "code": 0.25}
  assert tc.mixture_at(5) == {"web": 0.5, "code": 0.5}
  with pytest.raises(ValueError, match="mixture_stages"):
    parse_mixture_stages("0:web")


# -- resilience (8 fake devices) ------------------------------------------------------------

def _mesh2():
  return jax.make_mesh((2, jax.device_count() // 2), ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _fsdp_model():
  m = _model()
  m.param_shardings = lambda p, mesh: jax.tree.map(
      lambda x: NamedSharding(mesh, P("fsdp") if x.ndim == 2 else P()), p)
  return m


def _run(tc, on_step=None, mesh=None, model=None):
  t = Trainer(model or _fsdp_model(), tc, mesh or _mesh2(), StreamLoader(8, 8), None,
              log=lambda s: None)
  t.run(on_step=on_step)
  return t


needs8 = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 devices")


@needs8
def test_in_memory_recovery_is_exact():
  tc = _tc(steps=10, replica_every=3)
  ref = _run(tc)
  failed = []

  def fail_once(t):
    if t.step == 8 and not failed:
      failed.append(t.recover_from_memory())
  t = _run(tc, fail_once)
  assert failed == [6]
  for x, y in zip(jax.tree.leaves(ref.state), jax.tree.leaves(t.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rep = t.goodput.report()
  assert rep["failures"][0]["restored_step"] == 6 and rep["failures"][0]["recomputed_s"] > 0


@needs8
def test_replica_lives_on_peer_slice_and_survives_its_loss():
  t = Trainer(_fsdp_model(), _tc(), _mesh2(), StreamLoader(8, 8), None, log=lambda s: None)
  t.init_or_restore()
  rep = InMemoryReplica()
  rep.refresh(t.state, 0, {})
  w = t.state["params"]["w"]
  w_copy = rep._copy["params"]["w"]  # pylint: disable=protected-access
  # The copy of the shard on device d lives on device d + 4 (one slice later).
  prim = {s.device.id: (str(s.index), np.asarray(s.data)) for s in w.addressable_shards}
  for s in w_copy.addressable_shards:
    idx, data = prim[(s.device.id - 4) % 8]
    assert str(s.index) == idx
    np.testing.assert_array_equal(np.asarray(s.data), data)
  back = rep.recover(t.state_shardings, lost_devices=[0, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(back["params"]["w"]), np.asarray(w))
  # A copy on the same devices cannot survive losing both holders of fsdp shard 0.
  same = InMemoryReplica(shift=0)
  same.refresh(t.state, 0, {})
  with pytest.raises(RecoveryError, match="have no copy outside lost devices"):
    same.recover(t.state_shardings, lost_devices=[0, 4])


def _flip_bit_on_device(device_id, bit=3):
  def inject(stacked):
    leaves, tdef = jax.tree.flatten(stacked)
    x = leaves[0]
    shards = []
    for s in x.addressable_shards:
      data = s.data
      if s.device.id == device_id:
        host = np.array(data).view(np.uint32)
        host.reshape(-1)[0] ^= np.uint32(1 << bit)
        data = jax.device_put(host.view(np.float32), s.device)
      shards.append(data)
    leaves[0] = jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)
    return jax.tree.unflatten(tdef, leaves)
  return inject


@needs8
def test_sdc_bit_flip_detected_device_named_update_refused():
  tc = _tc(steps=4, sdc_every=2)
  t = Trainer(_fsdp_model(), tc, _mesh2(), StreamLoader(8, 8), None, log=lambda s: None)
  t.init_or_restore()
  t.train_step()
  before = jax.device_get(t.state)
  t.sdc_inject = _flip_bit_on_device(5)
  t.train_step()   # step 2 is a check step
  res = t.sdc_results[-1]
  assert not res.ok and res.faulty_devices == [5] and len(res.mismatched_shards) == 2
  assert t.step == 1
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(t.state))):
    np.testing.assert_array_equal(x, y)
  t.sdc_inject = None
  t.train_step()
  assert t.sdc_results[-1].ok and t.step == 2


@needs8
def test_elastic_loss_continues_within_noise():
  tc = _tc(steps=12, replica_every=2)
  ref = _run(tc)

  def lose(t):
    if t.step == 6 and t.mesh.devices.shape[0] == 2:
      t.lose_devices([4, 5, 6, 7])
  t = Trainer(_fsdp_model(), tc, _mesh2(), StreamLoader(8, 8), None, log=lambda s: None)
  losses = {}
  t.init_or_restore()
  while t.step < tc.steps:
    m = t.train_step()
    losses[t.step] = m["loss"]
    lose(t)
  assert dict(t.mesh.shape) == {"data": 1, "fsdp": 4}
  ref_p = jax.tree.leaves(ref.state["params"])
  for x, y in zip(ref_p, jax.tree.leaves(t.state["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
