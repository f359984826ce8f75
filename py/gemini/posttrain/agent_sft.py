"""`//py/gemini/posttrain:agent_sft`: SFT on tool-use and thinking demonstrations.

    bazel run //py/gemini/posttrain:agent_sft -- --workdir=/tmp/asft [--steps=300] \
        [--train_tasks=3000] [--heldout_tasks=200] [--n_layers=4]

Data (agent_tasks.py, all from programs): for the tool kinds (calc, bible, define) every other
task is a serving-format tool demonstration (tools declared in the system turn, the call, the
real tool result, the answer read from it) and the rest direct answers with no tools offered;
for the thinking kinds (add, count) every other task is a `<think>` scratchpad demonstration
and the rest direct answers. Only the model's turns are trained on (chat.loss_mask), and the
loss computes logits only at those positions (`selected_logits`: the same values as the full
LM head, 2-3x less work since the tool declarations are ~120 context tokens). The student is
the Nano-shaped model from scratch on SmolLM2's vocabulary + the thinking specials. At the
end, held-out (CRC split) accuracy with and without tools and at each thinking budget go to
`workdir/agent_sft.{json,png}`; the run resumes exactly (gemini.distill.loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.model import embed, spec, transformer
from gemini.posttrain import agent_eval, agent_tasks, chat, data as data_lib, episodes
from gemini.posttrain import reward as rm_lib
from gemini.posttrain import thinking
from gemini.train import step as step_lib
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--kinds", default=",".join(agent_tasks.KINDS))
  p.add_argument("--train_tasks", type=int, default=3000)
  p.add_argument("--heldout_tasks", type=int, default=200)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--seq_len", type=int, default=320)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--warmup_steps", type=int, default=20)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--n_layers", type=int, default=4)
  p.add_argument("--vocab_size", type=int, default=0,
                 help="student vocabulary (0: SmolLM2's 49,152 + thinking.VOCAB_EXTRA)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=25)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--budgets", default=",".join(str(b) for b in agent_eval.BUDGETS))
  return p.parse_args(argv)


def select_positions(rows: Dict[str, np.ndarray], multiple: int = 16) -> Dict[str, np.ndarray]:
  """Adds idx int32 [R, K] (the positions with loss_mask 1, padded with 0) and sel_w f32
  [R, K] (1 on real positions); K = the most any row has, rounded up to `multiple`."""
  w = rows["loss_mask"] * (rows["segment_ids"] != 0)
  k = max(multiple, -(-int((w > 0).sum(1).max()) // multiple) * multiple)
  idx = np.zeros((len(w), k), np.int32)
  sel = np.zeros((len(w), k), np.float32)
  for r in range(len(w)):
    at = np.nonzero(w[r] > 0)[0]
    idx[r, :len(at)] = at
    sel[r, :len(at)] = w[r, at]
  return dict(rows, idx=idx, sel_w=sel)


def selected_logits(params, cfg, batch) -> jax.Array:
  """LM-head logits f32 [B, K, V] at positions batch["idx"] [B, K] only."""
  h = rm_lib.final_hidden(params, cfg, {k: batch[k] for k in ("tokens", "segment_ids",
                                                               "positions")})
  h = jnp.take_along_axis(h, batch["idx"][..., None], axis=1)
  return embed.logits(params, h, cfg)


def selected_ce(params, cfg, batch) -> jax.Array:
  """Mean next-token CE over the selected positions (= the masked CE over the whole row)."""
  logp = jax.nn.log_softmax(selected_logits(params, cfg, batch), -1)
  tgt = jnp.take_along_axis(batch["targets"], batch["idx"], axis=1)
  nll = -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  w = batch["sel_w"]
  return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def build(args, s: agent_eval.Setup, log=print):
  kinds = [k for k in args.kinds.split(",") if k]
  train, held = agent_tasks.partition(s.bank, kinds, args.train_tasks, args.heldout_tasks,
                                      seed=args.seed * 2 + 101)
  demos, counts = agent_tasks.demonstrations(train, s.toolbox)
  convs = [s.fmt.encode(episodes.messages(turns, tools)) for turns, tools in demos]
  rows = select_positions(chat.pack(convs, args.seq_len))
  notes = dict(counts, kinds=kinds, heldout=len(held), heldout_seed=args.seed * 2 + 101,
               packed_rows=int(len(rows["tokens"])),
               selected_per_row=int(rows["idx"].shape[1]),
               tokens=int(sum(len(c[0]) for c in convs)),
               trained_tokens=int(sum(c[1].sum() for c in convs)))
  log(f"agent SFT data: {notes}")
  return rows, held, notes


def model_config(args, s: agent_eval.Setup):
  vocab = args.vocab_size or 49152 + thinking.VOCAB_EXTRA
  if s.think_close >= vocab:
    raise ValueError(f"tokenizer has {s.think_close + 1} ids > student vocabulary {vocab}")
  cfg = distill_train.student_config(vocab, d_model=args.d_model, n_layers=args.n_layers)
  return cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len + 256))


def run(args, setup=None, log=print) -> dict:
  s = setup or agent_eval.Setup()
  cfg = model_config(args, s)
  rows, held, notes = build(args, s, log)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": dataclasses.asdict(cfg), "init": "", "data": notes}, f, indent=1)
  tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed)
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)

  def loss_fn(params, batch, rng):
    del rng
    ce = selected_ce(params, cfg, batch)
    return ce, {"ce": ce}

  @jax.jit
  def jstep(state, batch):
    grads, m = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                          step_lib.step_rng(state))
    return step_lib.apply_grads(state, grads, optimizer, schedule)[0], m

  def step(state, batch):
    return jstep(state, {k: jnp.asarray(v) for k, v in batch.items()})

  init = transformer.init_params(cfg, jax.random.key(args.seed))
  state = loop.run(args.workdir, lambda: step_lib.init_state(init, optimizer, args.seed), step,
                   data_lib.PackedRows(rows, args.batch_size, args.seed), args.steps,
                   checkpoint_every=args.checkpoint_every, tokens_per_step=tc.tokens_per_step,
                   log=log, log_every=args.log_every, name="agent sft step")
  budgets = [int(b) for b in args.budgets.split(",") if b]
  ev = agent_eval.evaluate(state["params"], cfg, s, held, budgets)
  log(f"held-out after agent SFT: {json.dumps(ev)}")
  result = {"eval": ev, "data": notes, "steps": args.steps}
  agent_eval.write_report(args.workdir, "agent_sft", result,
                          f"agent SFT ({args.steps} steps), held-out")
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
