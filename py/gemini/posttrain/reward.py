"""`//py/gemini/posttrain:reward`: a Bradley–Terry reward model on verifiable preference pairs.

    bazel run //py/gemini/posttrain:reward -- --workdir=/tmp/rm --init=/tmp/sft [--steps=80]

The reward of a conversation is the language model's logit of one fixed token (`--score_id`)
at the conversation's last position (the public forward gives logits only, so the LM head
serves as the reward head). Pairs (pairs.py) are the programs' answers against wrong answers
the programs reject; held-out pair accuracy on disjoint prompts is written to
`workdir/reward.json`. Starts from `--init` (an sft or distill:train workdir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.model import spec, transformer
from gemini.posttrain import bradley_terry, chat, pairs as pairs_lib, sft, tasks as tasks_lib
from gemini.train import step as step_lib
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig


def fits(fmt: chat.ChatFormat, pair, seq_len: int) -> bool:
  """True if both conversations of `pair` fit a row of seq_len tokens."""
  t, good, bad = pair
  return all(len(fmt.encode([{"role": "user", "content": t.prompt},
                             {"role": "assistant", "content": a}])[0]) - len(fmt.newline)
             <= seq_len for a in (good, bad))


def encode_pairs(fmt: chat.ChatFormat, pairs, seq_len: int) -> dict:
  """-> {tokens, segment_ids, positions, last: int32 [N, 2, ...]} (0 = chosen, 1 = rejected),
  one conversation per row, right-padded."""
  n = len(pairs)
  out = {k: np.zeros((n, 2, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
  out["last"] = np.zeros((n, 2), np.int32)
  for i, (t, good, bad) in enumerate(pairs):
    for j, ans in enumerate((good, bad)):
      toks, _ = fmt.encode([{"role": "user", "content": t.prompt},
                            {"role": "assistant", "content": ans}])
      toks = toks[:-len(fmt.newline)] if len(fmt.newline) else toks   # end on <|im_end|>
      if len(toks) > seq_len:
        raise ValueError(f"pair {i}: {len(toks)} tokens > seq_len {seq_len}")
      out["tokens"][i, j, :len(toks)] = toks
      out["segment_ids"][i, j, :len(toks)] = 1
      out["positions"][i, j, :len(toks)] = np.arange(len(toks))
      out["last"][i, j] = len(toks) - 1
  return out


def rewards(params, cfg, batch, score_id: int) -> jax.Array:
  """batch [N, 2, S] -> rewards f32 [N, 2]."""
  n, two, s = batch["tokens"].shape
  flat = {k: batch[k].reshape(n * two, s) for k in ("tokens", "segment_ids", "positions")}
  logits = transformer.forward(params, flat, cfg)[0]
  last = batch["last"].reshape(-1)
  r = logits[jnp.arange(n * two), last, score_id]
  return r.reshape(n, two)


class PairData:
  """Epoch-shuffled pair batches (loop.py protocol)."""

  def __init__(self, arrays: dict, batch_size: int, seed: int):
    self.a, self.b, self.seed = arrays, batch_size, seed
    self.n = len(arrays["last"])
    self.epoch, self.pos = 0, 0

  def next(self):
    if self.pos + self.b > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    idx = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)[self.pos:self.pos + self.b]
    self.pos += self.b
    return {k: v[idx] for k, v in self.a.items()}

  def state(self):
    return {"epoch": self.epoch, "pos": self.pos}

  def restore(self, s):
    self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


def pair_accuracy(params, cfg, arrays, score_id, batch=32) -> float:
  f = jax.jit(lambda p, b: rewards(p, cfg, b, score_id))
  hits = []
  n = len(arrays["last"])
  for i in range(0, n, batch):
    idx = np.arange(i, i + batch) % n                   # fixed shape; wrap-around rows dropped
    r = np.asarray(f(params, {k: jnp.asarray(v[idx]) for k, v in arrays.items()}))
    hits.extend((r[:, 0] > r[:, 1])[:min(batch, n - i)])
  return float(np.mean(hits))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", default="")
  p.add_argument("--kinds", default=",".join(tasks_lib.KINDS))
  p.add_argument("--train_pairs", type=int, default=1500)
  p.add_argument("--heldout_pairs", type=int, default=200)
  p.add_argument("--score_id", type=int, default=0)
  p.add_argument("--steps", type=int, default=80)
  p.add_argument("--batch_size", type=int, default=8, help="pairs per step")
  p.add_argument("--seq_len", type=int, default=48)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--warmup_steps", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=20)
  p.add_argument("--log_every", type=int, default=10)
  return p.parse_args(argv)


def run(args, tok=None, bank=None, log=print) -> dict:
  if tok is None:
    from gemini.distill import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
    tok = teacher_lib.load_teacher().tokenizer
  if args.init:
    cfg = sft.load_student_config(args.init)
    init_params = sft.load_params(args.init, cfg)
  else:
    cfg = distill_train.student_config(49152)
    init_params = transformer.init_params(cfg, jax.random.key(args.seed))
  fmt = chat.ChatFormat.from_tokenizer(tok)
  bank = bank or tasks_lib.TaskBank.load()
  kinds = [k for k in args.kinds.split(",") if k]
  train_t = bank.split(kinds, args.train_pairs, seed=args.seed * 2 + 11)
  seen = {t.prompt for t in train_t}
  held_t = [t for t in bank.split(kinds, args.heldout_pairs * 2, seed=args.seed * 2 + 12)
            if t.prompt not in seen][:args.heldout_pairs]
  # Pairs longer than a row (long WordNet glosses) are left out and counted.
  train_p = pairs_lib.verifiable_pairs(train_t, bank, args.seed)
  train_p = [p for p in train_p if fits(fmt, p, args.seq_len)]
  train = encode_pairs(fmt, train_p, args.seq_len)
  held_pairs = [p for p in pairs_lib.verifiable_pairs(held_t, bank, args.seed + 1)
                if fits(fmt, p, args.seq_len)]
  if not held_pairs:
    raise ValueError(f"--kinds={args.kinds}: no held-out prompt differs from the training ones")
  held = encode_pairs(fmt, held_pairs, args.seq_len)
  tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed)
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)

  def loss_fn(params, batch, rng):
    del rng
    r = rewards(params, cfg, batch, args.score_id)
    loss, m = bradley_terry.bradley_terry_loss(r[:, 0], r[:, 1])
    return loss, m

  @jax.jit
  def jstep(state, batch):
    grads, m = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                          step_lib.step_rng(state))
    return step_lib.apply_grads(state, grads, optimizer, schedule)[0], m

  before = pair_accuracy(init_params, cfg, held, args.score_id)
  log(f"held-out pair accuracy before: {before:.3f}")
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": dataclasses.asdict(cfg), "init": args.init,
               "score_id": args.score_id}, f, indent=1)
  state = loop.run(args.workdir, lambda: step_lib.init_state(init_params, optimizer, args.seed),
                   lambda s, b: jstep(s, {k: jnp.asarray(v) for k, v in b.items()}),
                   PairData(train, args.batch_size, args.seed), args.steps,
                   checkpoint_every=args.checkpoint_every, log=log, log_every=args.log_every,
                   name="reward step")
  after = pair_accuracy(state["params"], cfg, held, args.score_id)
  per_kind = {}
  for k in kinds:
    idx = [i for i, (t, _, _) in enumerate(held_pairs) if t.kind == k]
    if idx:
      per_kind[k] = pair_accuracy(state["params"], cfg, {a: v[idx] for a, v in held.items()},
                                  args.score_id)
  log(f"held-out pair accuracy after: {after:.3f} {per_kind}")
  result = {"before": before, "after": after, "after_per_kind": per_kind,
            "train_pairs": int(len(train["last"])), "heldout_pairs": len(held_pairs),
            "steps": args.steps}
  with open(os.path.join(args.workdir, "reward.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
