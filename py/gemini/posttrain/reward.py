"""`//py/gemini/posttrain:reward`: a Bradley–Terry reward model on verifiable preference pairs.

    bazel run //py/gemini/posttrain:reward -- --workdir=/tmp/rm [--init=/tmp/sft] [--steps=1500]

The reward of a conversation is a scalar read from the decoder's final (normed) hidden state
at the conversation's last token (its closing `<|im_end|>`, which attends to the whole prompt
and answer): `--head=value` (default) a learned linear value head w·h + b; `--head=token`
the LM head's logit of one fixed token (`--score_id`), i.e. w tied to that token's embedding
row. Pairs (pairs.py) are the programs' answers against wrong answers the programs reject,
chosen and rejected scored by the same function (so a pair's order carries nothing);
held-out pair accuracy (per kind, ties count as half) on disjoint prompts is written to
`workdir/reward.json`, with `metrics.jsonl`/`loss.png` (held-out accuracy logged every
`--eval_every` steps). Starts from `--init`: an sft or distill:train workdir, `teacher` (the
pre-trained SmolLM2-135M-Instruct itself, the usual recipe of a reward model fine-tuned from a
pre-trained LM), or nothing (from scratch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import loop
from gemini.distill import train as distill_train
from gemini.config import ModelConfig
from gemini.model import attention, embed, norm, spec, transformer
from gemini.posttrain import bradley_terry, chat, pairs as pairs_lib, plots, sft
from gemini.posttrain import tasks as tasks_lib
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


HEADS = ("value", "token")


def final_hidden(params, cfg: ModelConfig, batch) -> jax.Array:
  """The decoder's final-normed hidden states f32 [B,S,D] (what `transformer.forward` feeds
  the LM head; tests check hidden @ embedding^T equals its logits)."""
  x, seg, pos, bidir = transformer.embed_inputs(params, batch, cfg)

  def attn_fn(p, h):
    return attention.attention_block(p, h, seg, pos, bidir, cfg), None

  def layer_fn(lp, x, is_moe, _, state):
    x, m, _ = transformer.decoder_layer(lp, x, attn_fn, cfg, is_moe)
    return x, m, state

  x, _, _ = transformer.scan_decoder(params, x, cfg, layer_fn)
  return norm.rms_norm(params["final_norm"], x, cfg.norm_eps).astype(jnp.float32)


def init_rm_params(lm_params, cfg: ModelConfig, seed: int) -> dict:
  """{"lm": decoder params, "head": {"w" f32 [D] ~ N(0, 1/D), "b" f32 []}}."""
  w = jax.random.normal(jax.random.key(seed + 1), (cfg.d_model,), jnp.float32) / cfg.d_model
  return {"lm": lm_params, "head": {"w": w, "b": jnp.zeros((), jnp.float32)}}


def rm_decay_mask(cfg: ModelConfig) -> dict:
  return {"lm": spec.decay_mask(cfg), "head": {"w": True, "b": False}}


def score(params, cfg: ModelConfig, tokens, segment_ids, positions, last, head: str,
          score_id: int) -> jax.Array:
  """Rewards f32 [N] of N conversations (rows [N,S], `last` int32 [N] = index of each row's
  last token)."""
  h = final_hidden(params["lm"], cfg, {"tokens": tokens, "segment_ids": segment_ids,
                                       "positions": positions})
  h = h[jnp.arange(h.shape[0]), last]                                       # [N, D]
  if head == "value":
    return h @ params["head"]["w"] + params["head"]["b"]
  if head == "token":
    return embed.logits(params["lm"], h[:, None], cfg)[:, 0, score_id]
  raise ValueError(f"--head={head!r}: expected one of {HEADS}")


def rewards(params, cfg, batch, head: str, score_id: int) -> jax.Array:
  """batch [N, 2, S] (0 = chosen, 1 = rejected) -> rewards f32 [N, 2]."""
  n, two, s = batch["tokens"].shape
  flat = [batch[k].reshape(n * two, s) for k in ("tokens", "segment_ids", "positions")]
  return score(params, cfg, *flat, batch["last"].reshape(-1), head, score_id).reshape(n, two)


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


def pair_rewards(params, cfg, arrays, head, score_id, batch=32) -> np.ndarray:
  """Rewards f32 [N, 2] of every pair in `arrays` (fixed-shape batches)."""
  f = jax.jit(lambda p, b: rewards(p, cfg, b, head, score_id))
  n = len(arrays["last"])
  out = []
  for i in range(0, n, batch):
    idx = np.arange(i, i + batch) % n                   # fixed shape; wrap-around rows dropped
    r = np.asarray(f(params, {k: jnp.asarray(v[idx]) for k, v in arrays.items()}))
    out.append(r[:min(batch, n - i)])
  return np.concatenate(out)


def accuracy_of(r: np.ndarray) -> float:
  """Pair accuracy of rewards [N, 2]: chosen above rejected, a tie counting as half."""
  return float(np.mean((r[:, 0] > r[:, 1]) + 0.5 * (r[:, 0] == r[:, 1])))


def heldout_report(params, cfg, arrays, kinds_of: List[str], head, score_id) -> Dict[str, float]:
  """{"all": accuracy, kind: accuracy, ...} on held-out pairs."""
  r = pair_rewards(params, cfg, arrays, head, score_id)
  out = {"all": accuracy_of(r)}
  for k in sorted(set(kinds_of)):
    idx = [i for i, kk in enumerate(kinds_of) if kk == k]
    out[k] = accuracy_of(r[idx])
  return out


class RewardModel:
  """A trained reward model read back from its workdir: `cfg`, `params`, `head`, `score_id`;
  `__call__(tokens, segment_ids, positions, last)` -> rewards f32 [N] (jitted)."""

  def __init__(self, workdir: str):
    with open(os.path.join(workdir, "student.json")) as f:
      meta = json.load(f)
    self.cfg = sft.load_student_config(workdir)
    self.head, self.score_id = meta["head"], int(meta["score_id"])
    like = step_lib.init_state(
        init_rm_params(transformer.init_params(self.cfg, jax.random.key(0)), self.cfg, 0),
        make_optimizer(TrainConfig(steps=1), rm_decay_mask(self.cfg)), 0)
    self.params = loop.restore_final(workdir, like)["params"]
    self._f = jax.jit(lambda p, *a: score(p, self.cfg, *a, self.head, self.score_id))

  def __call__(self, tokens, segment_ids, positions, last) -> np.ndarray:
    return np.asarray(self._f(self.params, *(jnp.asarray(a) for a in
                                             (tokens, segment_ids, positions, last))))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", default="", help="sft/distill workdir | teacher | '' (scratch)")
  p.add_argument("--kinds", default=",".join(tasks_lib.KINDS))
  p.add_argument("--train_pairs", type=int, default=6000)
  p.add_argument("--heldout_pairs", type=int, default=500)
  p.add_argument("--head", default="value", choices=HEADS)
  p.add_argument("--score_id", type=int, default=0, help="the scored token for --head=token")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch_size", type=int, default=32, help="pairs per step")
  p.add_argument("--seq_len", type=int, default=48)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--warmup_steps", type=int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=100)
  p.add_argument("--eval_every", type=int, default=0,
                 help="held-out accuracy at every checkpoint whose step it divides (0: end only)")
  p.add_argument("--log_every", type=int, default=25)
  return p.parse_args(argv)


def build(args, fmt, bank) -> Tuple[dict, dict, List[str]]:
  """-> (train pair arrays, held-out pair arrays, held-out kinds)."""
  kinds = [k for k in args.kinds.split(",") if k]
  train_t, held_t = bank.partition(kinds, args.train_pairs, args.heldout_pairs,
                                   seed=args.seed * 2 + 11)
  # Pairs longer than a row (long WordNet glosses) are left out.
  train_p = [p for p in pairs_lib.verifiable_pairs(train_t, bank, args.seed)
             if fits(fmt, p, args.seq_len)]
  held_p = [p for p in pairs_lib.verifiable_pairs(held_t, bank, args.seed + 1)
            if fits(fmt, p, args.seq_len)]
  if not held_p:
    raise ValueError(f"--kinds={args.kinds}: no held-out prompt differs from the training ones")
  return (encode_pairs(fmt, train_p, args.seq_len), encode_pairs(fmt, held_p, args.seq_len),
          [t.kind for t, _, _ in held_p])


def run(args, tok=None, bank=None, log=print) -> dict:
  if tok is None:
    from gemini.distill import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
    tok = teacher_lib.load_teacher().tokenizer
  if args.init == "teacher":
    from gemini.distill import teacher as teacher_lib  # pylint: disable=import-outside-toplevel
    t = teacher_lib.load_teacher()
    cfg, lm = t.cfg, t.params
  elif args.init:
    cfg = sft.load_student_config(args.init)
    lm = sft.load_params(args.init, cfg)
  else:
    cfg = distill_train.student_config(49152)
    lm = transformer.init_params(cfg, jax.random.key(args.seed))
  cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len))
  init_params = init_rm_params(lm, cfg, args.seed)
  fmt = chat.ChatFormat.from_tokenizer(tok)
  bank = bank or tasks_lib.TaskBank.load()
  train, held, held_kinds = build(args, fmt, bank)
  log(f"pairs: {len(train['last'])} train, {len(held_kinds)} held-out")
  tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed)
  optimizer, schedule = make_optimizer(tc, rm_decay_mask(cfg)), lr_schedule(tc)

  def loss_fn(params, batch, rng):
    del rng
    r = rewards(params, cfg, batch, args.head, args.score_id)
    return bradley_terry.bradley_terry_loss(r[:, 0], r[:, 1])

  @jax.jit
  def jstep(state, batch):
    grads, m = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                          step_lib.step_rng(state))
    state, upd = step_lib.apply_grads(state, grads, optimizer, schedule)
    return state, dict(m, grad_norm=upd["grad_norm"], lr=upd["lr"])

  def report(params):
    return heldout_report(params, cfg, held, held_kinds, args.head, args.score_id)

  before = report(init_params)
  log(f"held-out pair accuracy before: {before}")
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": dataclasses.asdict(cfg), "init": args.init, "head": args.head,
               "score_id": args.score_id}, f, indent=1)
  heldout_path = os.path.join(args.workdir, "heldout.jsonl")

  reported = {}                 # step -> held-out accuracy, so the last step is scored once

  def on_checkpoint(done, state):
    if args.eval_every and done % args.eval_every == 0:
      acc = reported[done] = report(state["params"])
      with open(heldout_path, "a") as f:
        f.write(json.dumps(dict({"step": done}, **{f"heldout_{k}": v for k, v in acc.items()}))
                + "\n")
      log(f"step {done}: held-out pair accuracy {acc['all']:.3f}")
      plots.plot_curves(heldout_path, os.path.join(args.workdir, "heldout.png"),
                        ["heldout_all"] + [f"heldout_{k}" for k in sorted(set(held_kinds))],
                        "reward model: held-out pair accuracy")

  state = loop.run(args.workdir, lambda: step_lib.init_state(init_params, optimizer, args.seed),
                   lambda s, b: jstep(s, {k: jnp.asarray(v) for k, v in b.items()}),
                   PairData(train, args.batch_size, args.seed), args.steps,
                   checkpoint_every=args.checkpoint_every, log=log, log_every=args.log_every,
                   name="reward step", on_checkpoint=on_checkpoint)
  after = reported.get(args.steps) or report(state["params"])
  log(f"held-out pair accuracy after: {after}")
  result = {"before": before["all"], "after": after["all"], "before_per_kind": before,
            "after_per_kind": after, "train_pairs": int(len(train["last"])),
            "heldout_pairs": len(held_kinds), "steps": args.steps, "head": args.head,
            "lr": args.lr, "batch_size": args.batch_size}
  with open(os.path.join(args.workdir, "reward.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
