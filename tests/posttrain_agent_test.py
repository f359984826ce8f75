"""Agent SFT and GRPO over tool episodes on a tiny model and a byte tokenizer: the
selected-position loss equals the masked full-row loss, both stages run end to end with the
held-out report, and an interrupted GRPO run resumes to bit-identical weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop, losses
from gemini.model import transformer
from gemini.distill.testing import ThinkBytes
from gemini.posttrain import agent_eval, agent_rl, agent_sft, sft, tasks

BANK = tasks.TaskBank(words=["apple", "stone", "river", "cloud", "bread", "chair"],
                      glosses={"apple": "a red fruit", "stone": "a hard rock"},
                      verses=[("Genesis", "In the beginning God created the heaven"),
                              ("Exodus", "Let my people go")])

TINY = ["--vocab_size=264", "--d_model=32", "--n_layers=1"]


def _setup():
  return agent_eval.Setup(tok=ThinkBytes(), bank=BANK)


def test_selected_loss_equals_masked_full_loss():
  s = _setup()
  args = agent_sft.parse_args(["--workdir=/unused", "--train_tasks=20", "--heldout_tasks=2",
                               "--seq_len=1100"] + TINY)
  rows, _, _ = agent_sft.build(args, s, log=lambda _: None)
  cfg = agent_sft.model_config(args, s)
  params = transformer.init_params(cfg, jax.random.key(0))
  batch = {k: jnp.asarray(v[:3]) for k, v in rows.items()}
  logits = transformer.forward(params, {k: batch[k] for k in ("tokens", "segment_ids",
                                                              "positions")}, cfg)[0]
  full = losses.hard_ce(logits, batch["targets"], batch["loss_mask"] * (batch["segment_ids"] != 0))
  np.testing.assert_allclose(float(agent_sft.selected_ce(params, cfg, batch)), float(full),
                             rtol=1e-5)


def test_agent_sft_then_grpo_resumes_bit_identical(tmp_path, monkeypatch):
  s, quiet = _setup(), (lambda _: None)
  res = agent_sft.run(agent_sft.parse_args(
      [f"--workdir={tmp_path}/sft", "--train_tasks=30", "--heldout_tasks=5", "--steps=2",
       "--batch_size=2", "--seq_len=1100", "--log_every=0", "--budgets=0,4"] + TINY),
      setup=s, log=quiet)
  ev = res["eval"]
  assert set(ev) == {"with_tools", "without_tools", "thinking"}
  assert set(ev["thinking"]) == {"0", "4"} and ev["thinking"]["4"]["thought_tokens"] <= 4
  assert (tmp_path / "sft" / "agent_sft.png").exists()

  def args(name):
    return agent_rl.parse_args([f"--workdir={tmp_path}/{name}", f"--init={tmp_path}/sft",
                                "--kinds=calc", "--prompts=2", "--group=2", "--max_new=8",
                                "--max_calls=1", "--seq_len=600", "--steps=4",
                                "--train_tasks=8",
                                "--checkpoint_every=2", "--log_every=0"])
  agent_rl.run(args("ref"), setup=s, log=quiet)
  recs = [json.loads(l) for l in open(tmp_path / "ref" / "metrics.jsonl")]
  assert len(recs) == 4 and all(r["kl"] >= 0 and 0 <= r["verified"] <= 1 for r in recs)
  assert recs[0]["kl"] < 1e-6                       # step 1 samples from the reference itself
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *x, **k: real_run(*x[:4], 2, **k))
  agent_rl.run(args("cut"), setup=s, log=quiet)
  monkeypatch.setattr(loop, "run", real_run)
  logs = []
  agent_rl.run(args("cut"), setup=s, log=logs.append)
  assert any("resumed from checkpoint step 2" in l for l in logs)
  cfg = sft.load_student_config(str(tmp_path / "sft"))
  a = sft.load_params(str(tmp_path / "ref"), cfg)
  b = sft.load_params(str(tmp_path / "cut"), cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
