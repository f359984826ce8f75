"""`//py/gemini/posttrain:agent_rl`: GRPO over tool-using episodes (verified-answer reward).

    bazel run //py/gemini/posttrain:agent_rl -- --workdir=/tmp/arl --init=/tmp/asft \
        [--kinds=calc,bible,define] [--prompts=4] [--group=8] [--steps=20]

Each step runs `--group` episodes (episodes.py: tools offered, sampled at `--temperature`,
keys folded from the step so a resumed run samples the same episodes) for each of `--prompts`
training tasks; reward = 1 iff the final answer passes the task's checker. The GRPO objective
(grpo.py: group-normalised advantages, clipped ratio, k3 KL to the frozen `--init` policy)
is taken over the tokens the policy sampled only (its tool calls and answers; the prompt and
the tool results are context), with logits computed at those positions only. Held-out
accuracy with and without tools (and, with --budgets, at each thinking budget) on the SFT
stage's held-out tasks, before (the SFT report) and after, goes to
`workdir/agent_rl.{json,png}`, per-step reward/KL to `metrics.jsonl`/`rl.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop
from gemini.model import spec
from gemini.posttrain import agent_eval, agent_sft, agent_tasks, episodes, grpo, plots, rl, sft
from gemini.train import step as step_lib
from gemini.train.metrics import read_metrics
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", required=True, help="agent_sft workdir (policy start, KL reference)")
  p.add_argument("--kinds", default=",".join(agent_tasks.TOOL_KINDS))
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--max_new", type=int, default=64)
  p.add_argument("--max_calls", type=int, default=2)
  p.add_argument("--seq_len", type=int, default=448, help="longest episode (tokens)")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--lr", type=float, default=2e-4)
  p.add_argument("--clip_eps", type=float, default=0.2)
  p.add_argument("--kl_beta", type=float, default=0.04)
  p.add_argument("--train_tasks", type=int, default=2000)
  p.add_argument("--budgets", default="", help="thinking budgets to evaluate (default none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=5)
  p.add_argument("--log_every", type=int, default=1)
  return p.parse_args(argv)


def episode_batch(eps, seq_len: int, k: int) -> dict:
  """Episodes -> rows [N, seq_len] and the positions whose next token the policy sampled
  (idx [N, k], sel_w [N, k])."""
  n = len(eps)
  z = lambda: np.zeros((n, seq_len), np.int32)
  out = {"tokens": z(), "segment_ids": z(),
         "idx": np.zeros((n, k), np.int32), "sel_w": np.zeros((n, k), np.float32)}
  for r, e in enumerate(eps):
    toks = e.tokens[:seq_len]
    out["tokens"][r, :len(toks)] = toks
    out["segment_ids"][r, :len(toks)] = 1
    at = [i for i in range(len(toks) - 1) if e.sampled[i + 1]][:k]
    out["idx"][r, :len(at)] = at
    out["sel_w"][r, :len(at)] = 1.0
  out["positions"] = np.maximum(np.cumsum(out["segment_ids"], 1) - 1, 0).astype(np.int32)
  out["targets"] = np.concatenate([out["tokens"][:, 1:], np.zeros((n, 1), np.int32)], 1)
  return out


def selected_logps(params, cfg, batch) -> jax.Array:
  """log pi(target | prefix) f32 [N, k] at the selected positions."""
  logp = jax.nn.log_softmax(agent_sft.selected_logits(params, cfg, batch), -1)
  tgt = jnp.take_along_axis(batch["targets"], batch["idx"], axis=1)
  return jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]


def run(args, setup=None, log=print) -> dict:
  s = setup or agent_eval.Setup()
  cfg = sft.load_student_config(args.init)
  ref_params = sft.load_params(args.init, cfg)
  cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len + args.max_new + 128))
  kinds = [k for k in args.kinds.split(",") if k]
  train_t, _ = agent_tasks.partition(s.bank, kinds, args.train_tasks, 0, seed=args.seed * 2 + 201)
  # The held-out tasks are the SFT stage's (same prompts, so its report is the "before").
  notes = json.load(open(os.path.join(args.init, "student.json")))["data"]
  sft_held = agent_tasks.partition(s.bank, notes["kinds"], 0, notes["heldout"],
                                   seed=notes.get("heldout_seed", 101))[1]
  held = [t for t in sft_held if t.kind in kinds]
  budgets = [int(b) for b in args.budgets.split(",") if b]
  think_held = [t for t in sft_held if t.kind in agent_tasks.THINK_KINDS] if budgets else []
  k = (args.max_calls + 1) * args.max_new
  tc = TrainConfig(steps=args.steps, batch_size=args.prompts * args.group, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=1, seed=args.seed, weight_decay=0.0)
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)
  ref_logps = jax.jit(lambda p, b: selected_logps(p, cfg, b))

  update = rl.make_update(lambda p, b: selected_logps(p, cfg, b), "sel_w", optimizer,
                            schedule, args.clip_eps, args.kl_beta)

  def step(state, items):
    i = int(state["step"])
    key = jax.random.fold_in(jax.random.key(args.seed + 11), i)
    pol = agent_eval.policy(state["params"], cfg, key=key, temperature=args.temperature,
                            batch=args.prompts * args.group)
    group = [t for t in items for _ in range(args.group)]
    eps = episodes.run(pol, s.fmt, s.tok, s.toolbox, group, True, max_calls=args.max_calls,
                       max_new=args.max_new, max_tokens=args.seq_len)
    ver = np.asarray([e.correct() for e in eps], np.float32)
    adv = grpo.group_advantages(jnp.asarray(ver.reshape(args.prompts, args.group)))
    batch = {kk: jnp.asarray(v) for kk, v in episode_batch(eps, args.seq_len, k).items()}
    batch["ref_logp"] = ref_logps(ref_params, batch)
    batch["adv"] = adv.reshape(-1)
    state, m = update(state, batch)
    return state, dict(m, reward=float(ver.mean()), verified=float(ver.mean()),
                       calls=float(np.mean([len(e.calls) for e in eps])),
                       answered=float(np.mean([e.finish == "answer" for e in eps])))

  def evaluate(params):
    ev = agent_eval.evaluate(params, cfg, s, held, [])
    if budgets:
      ev.update(agent_eval.evaluate(params, cfg, s, think_held, budgets))
    return ev

  os.makedirs(args.workdir, exist_ok=True)
  sft_report = os.path.join(args.init, "agent_sft.json")
  if os.path.exists(sft_report):
    before = json.load(open(sft_report))["eval"]
  else:
    before = evaluate(ref_params)
  log(f"held-out before agent RL: {json.dumps(before)}")

  def on_checkpoint(done, state):
    del done, state
    plots.plot_curves(os.path.join(args.workdir, "metrics.jsonl"),
                      os.path.join(args.workdir, "rl.png"), ["verified", "calls", "kl"],
                      "agent GRPO: training reward, tool calls, KL to the SFT reference")

  state = loop.run(args.workdir, lambda: step_lib.init_state(ref_params, optimizer, args.seed),
                   step, rl.PromptStream(train_t, args.prompts), args.steps,
                   checkpoint_every=args.checkpoint_every, log=log, log_every=args.log_every,
                   name="agent grpo step", on_checkpoint=on_checkpoint)
  after = evaluate(state["params"])
  log(f"held-out after agent RL: {json.dumps(after)}")
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": json.load(open(os.path.join(args.init, "student.json")))["config"],
               "init": args.init}, f, indent=1)
  recs = [r for r in read_metrics(os.path.join(args.workdir, "metrics.jsonl")) if "kl" in r]
  result = {"before": before, "eval": after, "steps": args.steps, "prompts": args.prompts,
            "group": args.group, "lr": args.lr, "kl_beta": args.kl_beta,
            "max_kl": max((r["kl"] for r in recs), default=0.0)}
  agent_eval.write_report(args.workdir, "agent_rl", result,
                          f"agent GRPO ({args.steps} steps), held-out")
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
