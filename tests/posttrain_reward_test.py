"""Reward model: verifiable pairs are (right, wrong) by the programs; Bradley–Terry training
on a tiny model raises held-out pair accuracy; an interrupted run resumes bit-identical."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.distill.testing import ChatBytes
from gemini.model import transformer
from gemini.posttrain import pairs, reward, tasks

WORDS = ["apple", "stone", "river", "cloud", "bread", "chair", "light", "night", "plant", "sugar",
         "table", "water", "grass", "house", "mouse", "train", "world", "green", "money", "paper",
         "music", "dream", "heart", "earth", "storm", "field", "glass", "smile", "tiger", "zebra"]
BANK = tasks.TaskBank(words=WORDS,
                      glosses={"apple": "a red fruit", "stone": "a hard rock"},
                      verses=[("Genesis", "In the beginning God created the heaven"),
                              ("Exodus", "Now these are the names of the children")])


def _tiny(monkeypatch):
  monkeypatch.setattr(distill_train, "student_config",
                      lambda vocab, *a, **k: distill_train.get_config("nano_tiny").replace(
                          vocab_size=260, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64, max_seq_len=96, dtype="float32"))


def _args(workdir, steps):
  return reward.parse_args([f"--workdir={workdir}", "--kinds=strings", "--train_pairs=128",
                            "--heldout_pairs=32", f"--steps={steps}", "--batch_size=8",
                            "--seq_len=64", "--lr=3e-3", "--checkpoint_every=3",
                            "--log_every=0", "--score_id=0", "--warmup_steps=2"])


def test_pairs_are_right_against_wrong():
  items = BANK.split(tasks.KINDS, 100, seed=0)
  ps = pairs.verifiable_pairs(items, BANK, seed=0)
  assert len(ps) >= 95
  for t, good, bad in ps:
    assert tasks.check(t.kind, good, t.answer) and not tasks.check(t.kind, bad, t.answer)


def test_reward_model_learns_and_resumes_bit_identical(tmp_path, monkeypatch):
  _tiny(monkeypatch)
  tok = ChatBytes()
  res = reward.run(_args(str(tmp_path / "ref"), 9), tok=tok, bank=BANK, log=lambda _: None)
  recs = [json.loads(l) for l in open(tmp_path / "ref" / "metrics.jsonl")]
  assert recs[-1]["loss"] < recs[0]["loss"]
  assert res["after"] >= res["before"] and 0.0 <= res["after"] <= 1.0
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *x, **k: real_run(*x[:4], 3, **k))
  reward.run(_args(str(tmp_path / "cut"), 9), tok=tok, bank=BANK, log=lambda _: None)
  monkeypatch.setattr(loop, "run", real_run)
  logs = []
  reward.run(_args(str(tmp_path / "cut"), 9), tok=tok, bank=BANK, log=logs.append)
  assert any("resumed from checkpoint step 3" in l for l in logs)
  a = reward.RewardModel(str(tmp_path / "ref")).params
  b = reward.RewardModel(str(tmp_path / "cut")).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _tiny_cfg():
  return distill_train.get_config("nano_tiny").replace(
      vocab_size=260, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64,
      max_seq_len=64, dtype="float32")


def test_final_hidden_is_what_the_lm_head_reads():
  cfg = _tiny_cfg()
  params = transformer.init_params(cfg, jax.random.key(3))
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, 260, (3, 12)), jnp.int32)}
  h = np.asarray(reward.final_hidden(params, cfg, batch), np.float64)
  logits = np.asarray(transformer.forward(params, batch, cfg)[0], np.float64)
  emb = np.asarray(params["embed"]["tokens"], np.float64)            # tied: logits = h E^T
  np.testing.assert_allclose(h @ emb.T, logits, rtol=1e-4, atol=1e-4)


def test_score_reads_the_last_token_of_each_row():
  cfg = _tiny_cfg()
  params = reward.init_rm_params(transformer.init_params(cfg, jax.random.key(4)), cfg, 0)
  rng = np.random.default_rng(1)
  toks = rng.integers(0, 260, (2, 10)).astype(np.int32)
  lens = np.array([6, 10])
  seg = (np.arange(10)[None] < lens[:, None]).astype(np.int32)
  toks = toks * seg
  pos = np.where(seg, np.arange(10)[None], 0).astype(np.int32)
  last = (lens - 1).astype(np.int32)
  r = np.asarray(reward.score(params, cfg, toks, seg, pos, last, "value", 0))
  for i, n in enumerate(lens):                     # each row alone, unpadded
    h = np.asarray(reward.final_hidden(params["lm"], cfg, {"tokens": jnp.asarray(toks[i:i + 1, :n])}))
    want = h[0, -1] @ np.asarray(params["head"]["w"]) + float(params["head"]["b"])
    np.testing.assert_allclose(r[i], want, rtol=1e-4, atol=1e-5)
  tok_r = np.asarray(reward.score(params, cfg, toks, seg, pos, last, "token", 7))
  logits = np.asarray(transformer.forward(params["lm"], {"tokens": jnp.asarray(toks[:1, :6])}, cfg)[0])
  np.testing.assert_allclose(tok_r[0], logits[0, -1, 7], rtol=1e-4, atol=1e-5)
  # Chosen and rejected are scored by one function: swapping them mirrors the accuracy.
  rr = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  assert reward.accuracy_of(rr) == 0.5 and reward.accuracy_of(rr[:, ::-1]) == 0.5
  assert reward.accuracy_of(rr[:1]) == 1.0 and reward.accuracy_of(rr[2:]) == 0.5
