"""`//py/gemini/posttrain:sft`: supervised fine-tuning on program-checked chat tasks.

    bazel run //py/gemini/posttrain:sft -- --workdir=/tmp/sft --init=/tmp/kd-compare/top64 \
        [--kinds=arithmetic,units,strings,define,bible] [--train_tasks=2000] [--steps=150]
        [--teacher_answers=48]

Data (all built here, documented in README): `tasks.TaskBank` prompts with the programs'
answers as assistant turns, plus, with --teacher_answers=N, the teacher's own greedy answers
to N further prompts kept only where the program accepts them ("the model helps make its own
data"; the acceptance rate is reported). Conversations are packed (chat.pack) and only the
assistant turns are trained on. Held-out accuracy (greedy, program-checked, prompts disjoint
from training) is measured before and after; everything lands in `workdir/sft.json`.
The student starts from `--init` (a distill:train workdir) or from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.distill import loop, losses
from gemini.distill import teacher as teacher_lib
from gemini.distill import train as distill_train
from gemini.model import spec, transformer
from gemini.posttrain import chat, data as data_lib, generate as gen_lib, tasks as tasks_lib
from gemini.train import step as step_lib
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig


def load_student_config(workdir: str) -> ModelConfig:
  with open(os.path.join(workdir, "student.json")) as f:
    c = json.load(f)["config"]
  from gemini.config import AudioConfig, MoEConfig, VisionConfig  # pylint: disable=import-outside-toplevel
  c["moe"] = MoEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in c["moe"].items()})
  c["vision"], c["audio"] = VisionConfig(**c["vision"]), AudioConfig(**c["audio"])
  return ModelConfig(**c)


def load_params(workdir: str, cfg: ModelConfig):
  """Params of the final checkpoint of a stage that ran loop.run with a step.py state."""
  like = step_lib.init_state(transformer.init_params(cfg, jax.random.key(0)),
                             make_optimizer(TrainConfig(steps=1), spec.decay_mask(cfg)), 0)
  return loop.restore_final(workdir, like)["params"]


def accuracy(params, cfg, fmt: chat.ChatFormat, tok, items: List[tasks_lib.Task],
             max_new: int = 16, system: str = "") -> Dict[str, float]:
  """Greedy, program-checked accuracy per kind (and 'all') on `items`."""
  prompts = [fmt.encode(_turns(t.prompt, system), generation_prompt=True)[0] for t in items]
  outs = gen_lib.generate(params, cfg, prompts, max_new, fmt.im_end)
  hits: Dict[str, List[bool]] = {}
  for t, o in zip(items, outs):
    reply = tok.decode([int(i) for i in o if i != fmt.im_end])
    hits.setdefault(t.kind, []).append(tasks_lib.check(t.kind, reply, t.answer))
  res = {k: float(np.mean(v)) for k, v in hits.items()}
  res["all"] = float(np.mean([x for v in hits.values() for x in v]))
  return res


def _turns(prompt: str, system: str = "", answer: str = None):
  t = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": prompt}]
  return t + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def teacher_answers(teacher, fmt, items, max_new=24, log=print):
  """The teacher's greedy answers; -> (accepted tasks with the teacher's wording, rate)."""
  prompts = [fmt.encode(_turns(t.prompt), generation_prompt=True)[0] for t in items]
  outs = gen_lib.generate(teacher.params, teacher.cfg, prompts, max_new, fmt.im_end, batch=8)
  kept = []
  for t, o in zip(items, outs):
    reply = teacher.tokenizer.decode([int(i) for i in o if i != fmt.im_end]).strip()
    if o.size and o[-1] == fmt.im_end and tasks_lib.check(t.kind, reply, t.answer):
      kept.append(dataclasses.replace(t, answer=reply))
  log(f"teacher answers: {len(kept)}/{len(items)} accepted by the programs")
  return kept, len(kept) / max(len(items), 1)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", default="", help="distill:train workdir to start from")
  p.add_argument("--kinds", default=",".join(tasks_lib.KINDS))
  p.add_argument("--train_tasks", type=int, default=2000)
  p.add_argument("--heldout_tasks", type=int, default=100)
  p.add_argument("--teacher_answers", type=int, default=0)
  p.add_argument("--digits", type=int, default=2)
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=96)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--warmup_steps", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=25)
  p.add_argument("--log_every", type=int, default=10)
  return p.parse_args(argv)


def build(args, tok, bank=None, teacher=None, log=print):
  """-> (ChatFormat, packed train rows, held-out tasks, data notes)."""
  fmt = chat.ChatFormat.from_tokenizer(tok)
  bank = bank or tasks_lib.TaskBank.load(args.digits)
  kinds = [k for k in args.kinds.split(",") if k]
  train, held = bank.partition(kinds, args.train_tasks, args.heldout_tasks, seed=args.seed * 2 + 1)
  notes = {"program_tasks": len(train), "heldout": len(held), "kinds": kinds}
  if args.teacher_answers and teacher is not None:
    extra = [t for t in bank.split(kinds, args.teacher_answers, seed=args.seed * 2 + 3)
             if not tasks_lib.is_heldout(t.prompt)]
    kept, rate = teacher_answers(teacher, fmt, extra, log=log)
    train = train + kept
    notes.update(teacher_answers=len(kept), teacher_asked=len(extra), teacher_accept_rate=rate)
  convs = [fmt.encode(_turns(t.prompt, answer=t.answer)) for t in train]
  rows = chat.pack(convs, args.seq_len)
  notes["packed_rows"] = int(rows["tokens"].shape[0])
  return fmt, rows, held, notes


def make_step(cfg: ModelConfig, tc: TrainConfig):
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)

  def loss_fn(params, batch, rng):
    del rng
    logits = transformer.forward(params, {k: batch[k] for k in ("tokens", "segment_ids",
                                                                "positions")}, cfg)[0]
    w = batch["loss_mask"] * (batch["segment_ids"] != 0)
    ce = losses.hard_ce(logits, batch["targets"], w)
    return ce, {"ce": ce}

  @jax.jit
  def jstep(state, batch):
    grads, m = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                          step_lib.step_rng(state))
    return step_lib.apply_grads(state, grads, optimizer, schedule)[0], m

  return (lambda s, b: jstep(s, {k: jnp.asarray(v) for k, v in b.items()})), optimizer


def run(args, tok=None, teacher=None, bank=None, log=print) -> dict:
  if tok is None or (args.teacher_answers and teacher is None):
    teacher = teacher or teacher_lib.load_teacher()
    tok = tok or teacher.tokenizer
  if args.init:
    cfg = load_student_config(args.init)
    init_params = load_params(args.init, cfg)
  else:
    cfg = distill_train.student_config(49152 if teacher is None else teacher.cfg.vocab_size)
    init_params = transformer.init_params(cfg, jax.random.key(args.seed))
  cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len + 32))
  fmt, rows, held, notes = build(args, tok, bank, teacher, log)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": dataclasses.asdict(cfg), "init": args.init, "data": notes}, f, indent=1)
  result_path = os.path.join(args.workdir, "sft.json")
  before = accuracy(init_params, cfg, fmt, tok, held)
  log(f"held-out accuracy before SFT: {before}")
  tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                   lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed)
  step, optimizer = make_step(cfg, tc)
  data = data_lib.PackedRows(rows, args.batch_size, args.seed)
  state = loop.run(args.workdir, lambda: step_lib.init_state(init_params, optimizer, args.seed),
                   step, data, args.steps, checkpoint_every=args.checkpoint_every,
                   tokens_per_step=tc.tokens_per_step, log=log, log_every=args.log_every,
                   name="sft step")
  after = accuracy(state["params"], cfg, fmt, tok, held)
  log(f"held-out accuracy after SFT: {after}")
  result = {"before": before, "after": after, "data": notes, "steps": args.steps}
  with open(result_path, "w") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
