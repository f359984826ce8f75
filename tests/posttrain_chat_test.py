"""Chat format: the loss mask covers exactly the model's turns (a token outside them changes
no gradient), and packed conversations never attend across each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import get_config
from gemini.distill import losses
from gemini.distill.testing import ChatBytes
from gemini.model import transformer
from gemini.posttrain import chat, tasks


FMT = chat.ChatFormat.from_tokenizer(ChatBytes())
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"}]
CFG = get_config("nano_tiny").replace(vocab_size=260, d_model=32, n_layers=2, n_heads=2,
                                      n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=128,
                                      dtype="float32")


def test_mask_is_exactly_the_assistant_bodies():
  toks, model = FMT.encode(CONV)
  text = bytes(t if t < 256 else ord("|") for t in toks).decode()
  assert text.count("|") == 10                       # 5 turns x (start, end)
  picked = [int(t) for t, m in zip(toks, model) if m]
  assert picked == [ord("4"), 258, ord("6"), 258]


def _loss(params, batch):
  logits = transformer.forward(params, batch, CFG)[0]
  return losses.hard_ce(logits, batch["targets"], batch["loss_mask"])


def test_a_token_outside_the_models_turns_changes_no_gradient():
  toks, model = FMT.encode(CONV)
  b = {k: jnp.asarray(v)[None] for k, v in chat.example_arrays(toks, model).items()}
  params = transformer.init_params(CFG, jax.random.key(0))
  g0 = jax.grad(_loss)(params, b)
  outside = np.where(np.asarray(b["loss_mask"][0]) == 0)[0]
  inside = np.where(np.asarray(b["loss_mask"][0]) == 1)[0]
  assert len(outside) > 10 and len(inside) == 4
  changed = np.asarray(b["targets"]).copy()
  changed[0, outside] = (changed[0, outside] + 7) % 256     # every non-model target differs
  g1 = jax.grad(_loss)(params, dict(b, targets=jnp.asarray(changed)))
  for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  changed = np.asarray(b["targets"]).copy()
  changed[0, inside[0]] = (changed[0, inside[0]] + 1) % 256  # one model target differs
  g2 = jax.grad(_loss)(params, dict(b, targets=jnp.asarray(changed)))
  assert any(not np.array_equal(np.asarray(a), np.asarray(c))
             for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g2)))


def test_packed_conversations_do_not_attend_across_documents():
  convs = [FMT.encode(CONV), FMT.encode(CONV[1:3]), FMT.encode(CONV[3:])]
  packed = chat.pack(convs, seq_len=128)
  assert packed["tokens"].shape[0] == 1 and set(np.unique(packed["segment_ids"])) - {0} == {1, 2, 3}
  params = transformer.init_params(CFG, jax.random.key(1))
  row = {k: jnp.asarray(packed[k]) for k in ("tokens", "segment_ids", "positions")}
  logits = np.asarray(transformer.forward(params, row, CFG)[0][0])
  at = 0
  for tok, model in convs:
    ex = chat.example_arrays(tok, model)
    alone = np.asarray(transformer.forward(params, {"tokens": jnp.asarray(ex["tokens"])[None]},
                                           CFG)[0][0])
    n = len(ex["tokens"])
    np.testing.assert_allclose(logits[at:at + n], alone, atol=2e-5)
    at += n


def test_pack_refuses_a_conversation_longer_than_a_row():
  with pytest.raises(ValueError, match="conversation 0 has"):
    chat.pack([FMT.encode(CONV)], seq_len=8)


def test_task_checkers_know_the_answers():
  bank = tasks.TaskBank(words=["apple"], glosses={"apple": "fruit with red or yellow skin"},
                        verses=[("Genesis", "In the beginning God created the heaven")])
  rng = np.random.default_rng(0)
  for kind in tasks.KINDS:
    for _ in range(20):
      t = bank.sample(kind, rng)
      assert tasks.check(kind, t.answer, t.answer), t
      assert tasks.check(kind, "<think>scratch</think>\n" + t.answer + "\nmore", t.answer)
  for _ in range(30):
    t = bank.sample("arithmetic", rng)
    a, op, b = t.prompt[len("What is "):-1].split()
    assert int(t.answer) == eval(f"{int(a)} {op} {int(b)}")       # independent reference
    assert not tasks.check("arithmetic", str(int(t.answer) + 1), t.answer)
  assert tasks.check("strings", "ELPPA", "elppa") and not tasks.check("strings", "appel", "elppa")
  assert tasks.check("define", "a fruit with yellow skin", "fruit with red or yellow skin")
  assert not tasks.check("define", "a large animal", "fruit with red or yellow skin")
  assert tasks.check("bible", "Genesis.", "Genesis") and not tasks.check("bible", "Exodus", "Genesis")


def test_partition_keeps_heldout_prompts_out_of_training():
  bank = tasks.TaskBank(words=["apple", "stone"], glosses={"apple": "a red fruit"},
                        verses=[("Genesis", "In the beginning God created the heaven")])
  # Units have 594 prompts: 5,000 training draws cover nearly all of them, yet the held-out
  # prompts (a fixed fifth by CRC-32) still never occur in training.
  train, held = bank.partition(["units", "arithmetic"], 5000, 100, seed=0)
  assert len(train) == 5000 and len(held) == 100
  assert len({t.prompt for t in held}) == 100
  assert not {t.prompt for t in held} & {t.prompt for t in train}
  assert {t.kind for t in held} == {"units", "arithmetic"}
  assert all(tasks.is_heldout(t.prompt) for t in held)
  assert not any(tasks.is_heldout(t.prompt) for t in train)
  units = {t.prompt for t in train if t.kind == "units"}
  assert len(units) > 0.7 * 594
