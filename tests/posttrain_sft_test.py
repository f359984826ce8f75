"""SFT on program-checked tasks (tiny model, byte tokenizer): the masked loss falls, held-out
accuracy is measured by the programs before and after, and an interrupted run resumed from
its checkpoint ends bit-identical to an unbroken one."""

import argparse
import json

import jax
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.posttrain import sft, tasks
from gemini.train import step as step_lib
from gemini.train.train_config import TrainConfig

from gemini.distill.testing import ChatBytes

BANK = tasks.TaskBank(words=["apple", "stone", "river"], glosses={"apple": "a red fruit"},
                      verses=[("Genesis", "In the beginning God created the heaven")])


def _args(workdir, steps):
  return sft.parse_args([f"--workdir={workdir}", "--kinds=units", "--train_tasks=200",
                         "--heldout_tasks=16", f"--steps={steps}", "--batch_size=4",
                         "--seq_len=64", "--lr=3e-3", "--warmup_steps=2",
                         "--checkpoint_every=3", "--log_every=0"])


def _tiny(monkeypatch):
  monkeypatch.setattr(distill_train, "student_config",
                      lambda vocab, *a, **k: distill_train.get_config("nano_tiny").replace(
                          vocab_size=260, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64, max_seq_len=96, dtype="float32"))


def test_sft_trains_on_the_model_turns_and_reports_accuracy(tmp_path, monkeypatch):
  _tiny(monkeypatch)
  res = sft.run(_args(str(tmp_path / "a"), 12), tok=ChatBytes(), bank=BANK, log=lambda _: None)
  recs = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  assert recs[-1]["ce"] < recs[0]["ce"] - 1.0
  assert set(res["before"]) == {"units", "all"} and 0.0 <= res["after"]["all"] <= 1.0
  assert res["data"]["heldout"] == 16


def test_interrupted_sft_resumes_bit_identical(tmp_path, monkeypatch):
  _tiny(monkeypatch)
  tok = ChatBytes()
  a = _args(str(tmp_path / "ref"), 7)
  ref = sft.run(a, tok=tok, bank=BANK, log=lambda _: None)
  # The same run stopped after its step-3 checkpoint (as a kill would leave it), then rerun.
  b = _args(str(tmp_path / "cut"), 7)
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *x, **k: real_run(*x[:4], 3, **k))
  sft.run(b, tok=tok, bank=BANK, log=lambda _: None)
  monkeypatch.setattr(loop, "run", real_run)
  logs = []
  sft.run(b, tok=tok, bank=BANK, log=logs.append)
  assert any("resumed from checkpoint step 3" in l for l in logs)
  cfg = distill_train.student_config(260)
  cfg = cfg.replace(max_seq_len=96)
  p_ref = sft.load_params(str(tmp_path / "ref"), cfg)
  p_got = sft.load_params(str(tmp_path / "cut"), cfg)
  for x, y in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_got)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
