"""GRPO stage on a tiny SFT'd model: one run with verifier + reward-model rewards logs the
KL to the reference and the rewards; an interrupted run resumes to bit-identical weights
(the sampling keys are folded from the step, so the resumed run samples the same groups)."""

import json

import jax
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.distill.testing import ChatBytes
from gemini.posttrain import reward, rl, sft, tasks

BANK = tasks.TaskBank(words=["apple", "stone", "river", "cloud", "bread", "chair"],
                      glosses={"apple": "a red fruit"},
                      verses=[("Genesis", "In the beginning God created the heaven")])


def test_grpo_runs_with_both_rewards_and_resumes_bit_identical(tmp_path, monkeypatch):
  monkeypatch.setattr(distill_train, "student_config",
                      lambda vocab, *a, **k: distill_train.get_config("nano_tiny").replace(
                          vocab_size=260, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64, max_seq_len=128, dtype="float32"))
  tok, quiet = ChatBytes(), (lambda _: None)
  sft.run(sft.parse_args([f"--workdir={tmp_path}/sft", "--kinds=units", "--train_tasks=64",
                          "--heldout_tasks=4", "--steps=2", "--batch_size=4", "--seq_len=64",
                          "--log_every=0"]), tok=tok, bank=BANK, log=quiet)
  reward.run(reward.parse_args([f"--workdir={tmp_path}/rm", f"--init={tmp_path}/sft",
                                "--kinds=units", "--train_pairs=32", "--heldout_pairs=8",
                                "--steps=2", "--seq_len=64", "--log_every=0"]),
             tok=tok, bank=BANK, log=quiet)

  def args(name):
    return rl.parse_args([f"--workdir={tmp_path}/{name}", f"--init={tmp_path}/sft",
                          f"--reward_model={tmp_path}/rm", "--rm_weight=0.5", "--kinds=arithmetic",
                          "--prompts=2", "--group=3", "--max_new=6", "--steps=4",
                          "--heldout_tasks=4", "--seq_len=40", "--checkpoint_every=2",
                          "--log_every=0"])
  rl.run(args("ref"), tok=tok, bank=BANK, log=quiet)
  recs = [json.loads(l) for l in open(tmp_path / "ref" / "metrics.jsonl")]
  assert len(recs) == 4 and all(r["kl"] >= 0 and np.isfinite(r["reward"]) for r in recs)
  assert recs[0]["kl"] < 1e-6                      # step 1 samples from the reference itself
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *x, **k: real_run(*x[:4], 2, **k))
  rl.run(args("cut"), tok=tok, bank=BANK, log=quiet)
  monkeypatch.setattr(loop, "run", real_run)
  logs = []
  rl.run(args("cut"), tok=tok, bank=BANK, log=logs.append)
  assert any("resumed from checkpoint step 2" in l for l in logs)
  cfg = sft.load_student_config(str(tmp_path / "sft"))
  a = sft.load_params(str(tmp_path / "ref"), cfg)
  b = sft.load_params(str(tmp_path / "cut"), cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
