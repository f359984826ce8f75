"""`//py/gemini/posttrain:rl`: GRPO with a verifiable reward and a reward-model reward.

    bazel run //py/gemini/posttrain:rl -- --workdir=/tmp/rl --init=/tmp/sft \
        [--reward_model=/tmp/rm --rm_weight=0.5] [--verifier_weight=1.0] [--steps=30]

Each step samples `--group` completions for each of `--prompts` task prompts from the current
policy (gemini.model.decode.generate, temperature `--temperature`, keys folded from the step
so a resumed run samples the same completions), scores them with
  reward = verifier_weight * [program accepts the answer] + rm_weight * r_RM(conversation)
(r_RM from a posttrain:reward workdir), turns the group's rewards into advantages and takes
one gradient step on the GRPO objective with the KL to the frozen `--init` policy (grpo.py).
Held-out accuracy (greedy) before and after and the per-step mean KL go to `workdir/rl.json`
and `metrics.jsonl`.
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
from gemini.model import spec, transformer
from gemini.posttrain import chat, generate as gen_lib, grpo, plots, reward as rm_lib, sft
from gemini.posttrain import tasks as tasks_lib
from gemini.train import step as step_lib
from gemini.train.metrics import read_metrics
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig


def token_logps(params, cfg, tokens, segment_ids, positions):
  """log pi(tokens[:, t+1] | tokens[:, :t+1]) f32 [N, S-1]."""
  logits = transformer.forward(params, {"tokens": tokens[:, :-1], "segment_ids": segment_ids[:, :-1],
                                        "positions": positions[:, :-1]}, cfg)[0]
  logp = jax.nn.log_softmax(logits, -1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]


class PromptStream:
  """Task prompts in a fixed order; position is the resumable state."""

  def __init__(self, items, per_step: int):
    self.items, self.k, self.pos = items, per_step, 0

  def next(self):
    out = [self.items[(self.pos + i) % len(self.items)] for i in range(self.k)]
    self.pos += self.k
    return out

  def state(self):
    return {"pos": self.pos}

  def restore(self, s):
    self.pos = int(s["pos"])


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", required=True, help="sft workdir (policy start and KL reference)")
  p.add_argument("--reward_model", default="", help="posttrain:reward workdir")
  p.add_argument("--verifier_weight", type=float, default=1.0)
  p.add_argument("--rm_weight", type=float, default=0.0)
  p.add_argument("--kinds", default="arithmetic,units,strings")
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--group", type=int, default=4)
  p.add_argument("--max_new", type=int, default=12)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--clip_eps", type=float, default=0.2)
  p.add_argument("--kl_beta", type=float, default=0.04)
  p.add_argument("--heldout_tasks", type=int, default=100)
  p.add_argument("--train_tasks", type=int, default=2000)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=10)
  p.add_argument("--log_every", type=int, default=5)
  p.add_argument("--eval_every", type=int, default=0,
                 help="held-out accuracy at every checkpoint whose step it divides (0: end only)")
  return p.parse_args(argv)


def run(args, tok=None, bank=None, log=print) -> dict:
  if tok is None:
    from gemini.distill import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
    tok = teacher_lib.load_teacher().tokenizer
  cfg = sft.load_student_config(args.init)
  ref_params = sft.load_params(args.init, cfg)
  cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len + args.max_new + 8))
  rm = rm_lib.RewardModel(args.reward_model) if args.reward_model and args.rm_weight else None
  fmt = chat.ChatFormat.from_tokenizer(tok)
  bank = bank or tasks_lib.TaskBank.load()
  kinds = [k for k in args.kinds.split(",") if k]
  train_t, held = bank.partition(kinds, args.train_tasks, args.heldout_tasks,
                                 seed=args.seed * 2 + 21)
  if not held:
    raise ValueError(f"--kinds={args.kinds}: no held-out prompt differs from the training ones")
  tc = TrainConfig(steps=args.steps, batch_size=args.prompts * args.group, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=1, seed=args.seed, weight_decay=0.0)
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)
  logps = jax.jit(lambda p, t, s, q: token_logps(p, cfg, t, s, q))

  update = make_update(
      lambda p, b: token_logps(p, cfg, b["tokens"], b["segment_ids"], b["positions"]), "mask",
      optimizer, schedule, args.clip_eps, args.kl_beta)

  def step(state, items):
    i = int(state["step"])
    prompts = [fmt.encode([{"role": "user", "content": t.prompt}], generation_prompt=True)[0]
               for t in items for _ in range(args.group)]
    key = jax.random.fold_in(jax.random.key(args.seed + 7), i)
    outs = gen_lib.generate(state["params"], cfg, prompts, args.max_new, fmt.im_end, key=key,
                            temperature=args.temperature, batch=len(prompts),
                            width=args.seq_len)
    n, s = len(prompts), args.seq_len + args.max_new
    if max(len(p) for p in prompts) > args.seq_len:
      raise ValueError(f"a prompt has {max(len(p) for p in prompts)} tokens > --seq_len {args.seq_len}")
    toks = np.zeros((n, s), np.int32)
    seg = np.zeros((n, s), np.int32)
    mask = np.zeros((n, s - 1), np.float32)
    ver = np.zeros(n, np.float32)
    pairs_rows = []
    for r, (pr, o, t) in enumerate(zip(prompts, outs, [t for t in items for _ in range(args.group)])):
      full = np.concatenate([pr, o])[:s]
      toks[r, :len(full)] = full
      seg[r, :len(full)] = 1
      mask[r, len(pr) - 1:len(full) - 1] = 1.0
      reply = tok.decode([int(x) for x in o if x != fmt.im_end])
      ver[r] = float(tasks_lib.check(t.kind, reply, t.answer))
      pairs_rows.append(full)
    pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
    total = args.verifier_weight * ver
    if rm is not None:
      total = total + args.rm_weight * rm(toks, seg, pos, (seg.sum(1) - 1).astype(np.int32))
    adv = np.asarray(grpo.group_advantages(jnp.asarray(total.reshape(args.prompts, args.group))))
    j = (jnp.asarray(toks), jnp.asarray(seg), jnp.asarray(pos))
    batch = {"tokens": j[0], "segment_ids": j[1], "positions": j[2],
             "ref_logp": logps(ref_params, *j),
             "adv": jnp.asarray(adv.reshape(-1)), "mask": jnp.asarray(mask)}
    state, m = update(state, batch)
    return state, dict(m, reward=float(total.mean()), verified=float(ver.mean()))

  before = sft.accuracy(ref_params, cfg, fmt, tok, held)
  log(f"held-out accuracy before RL: {before}")
  os.makedirs(args.workdir, exist_ok=True)
  heldout_path = os.path.join(args.workdir, "heldout.jsonl")
  if not os.path.exists(heldout_path):
    with open(heldout_path, "w") as f:
      f.write(json.dumps(dict({"step": 0}, **{f"heldout_{k}": v for k, v in before.items()}))
              + "\n")

  def plot():
    plots.plot_curves(os.path.join(args.workdir, "metrics.jsonl"),
                      os.path.join(args.workdir, "rl.png"), ["verified", "reward", "kl"],
                      "GRPO: training reward and KL to the SFT reference")
    plots.plot_curves(heldout_path, os.path.join(args.workdir, "heldout.png"),
                      ["heldout_all"] + [f"heldout_{k}" for k in kinds],
                      "GRPO: held-out accuracy (greedy, program-checked)")

  def on_checkpoint(done, state):
    if args.eval_every and done % args.eval_every == 0 and done != args.steps:
      acc = sft.accuracy(state["params"], cfg, fmt, tok, held)
      with open(heldout_path, "a") as f:
        f.write(json.dumps(dict({"step": done}, **{f"heldout_{k}": v for k, v in acc.items()}))
                + "\n")
      log(f"step {done}: held-out accuracy {acc}")
    plot()

  state = loop.run(args.workdir, lambda: step_lib.init_state(ref_params, optimizer, args.seed),
                   step, PromptStream(train_t, args.prompts), args.steps,
                   checkpoint_every=args.checkpoint_every, log=log, log_every=args.log_every,
                   name="grpo step", on_checkpoint=on_checkpoint)
  after = sft.accuracy(state["params"], cfg, fmt, tok, held)
  log(f"held-out accuracy after RL: {after}")
  with open(heldout_path, "a") as f:
    f.write(json.dumps(dict({"step": args.steps}, **{f"heldout_{k}": v for k, v in after.items()}))
            + "\n")
  plot()
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": json.load(open(os.path.join(args.init, "student.json")))["config"],
               "init": args.init}, f, indent=1)
  recs = [r for r in read_metrics(os.path.join(args.workdir, "metrics.jsonl")) if "kl" in r]
  result = {"before": before, "after": after, "steps": args.steps,
            "max_kl": max((r["kl"] for r in recs), default=0.0),
            "group": args.group, "prompts": args.prompts, "kl_beta": args.kl_beta, "lr": args.lr,
            "rewards": {"verifier_weight": args.verifier_weight, "rm_weight": args.rm_weight}}
  with open(os.path.join(args.workdir, "rl.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def make_update(logps, mask_key: str, optimizer, schedule, clip_eps: float, kl_beta: float):
  """The jitted GRPO step `update(state, batch) -> (state, metrics)`: `logps(params, batch)`
  gives the policy's per-token log-probabilities, `batch[mask_key]` the tokens that count.
  One update per sampled batch: the sampling policy is the one being updated, so
  pi_old = stop_gradient(pi) (ratio 1, gradient A * grad log pi) without a second forward."""

  def loss_fn(params, batch, rng):
    del rng
    lp = logps(params, batch)
    return grpo.grpo_loss(lp, jax.lax.stop_gradient(lp), batch["ref_logp"], batch["adv"],
                          batch[mask_key], clip_eps, kl_beta)

  @jax.jit
  def update(state, batch):
    grads, m = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                          step_lib.step_rng(state))
    return step_lib.apply_grads(state, grads, optimizer, schedule)[0], m

  return update



def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
