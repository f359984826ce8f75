"""`//py/gemini/distill:train`: a Nano-shaped student trained on the teacher's vocabulary.

    bazel run //py/gemini/distill:train -- --targets=/tmp/kd --workdir=/tmp/kd-run \
        --mode=topk --k=64 [--hard_weight=0.0] [--temperature=1.0] [--steps=80]

Modes (loss = hard_weight * hard-label CE + (1 - hard_weight) * KD):
  none     hard labels only (the undistilled baseline; hard_weight is ignored)
  topk     stored top-k teacher distribution, renormalised over the kept ids
  sampled  stored Random-Sampling KD targets (importance-weighted teacher draws)
  full     online: the teacher runs in the same step, KD over all 49,152 logits

The student is `nano_tiny`'s shape (MQA, gated MLP, tied embeddings) at the sizes given by
the --d_model/--n_layers/... flags and the teacher's vocabulary; it computes in f32 on CPU.
The run resumes exactly from `--workdir` (see loop.py) and leaves its Orbax checkpoint there
for the next stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig, get_config
from gemini.distill import data as data_lib
from gemini.distill import loop, losses
from gemini.distill import teacher as teacher_lib
from gemini.model import spec, transformer
from gemini.train import step as step_lib
from gemini.train.optimizer import lr_schedule, make_optimizer
from gemini.train.train_config import TrainConfig

MODES = ("none", "topk", "sampled", "full")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  mode: str = "topk"
  k: int = 64                    # topk: ids kept per position (<= the stored k)
  hard_weight: float = 0.0       # weight of the hard-label CE in the mix
  temperature: float = 1.0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"--mode={self.mode!r}: expected one of {MODES}")
    if not 0.0 <= self.hard_weight <= 1.0:
      raise ValueError(f"--hard_weight={self.hard_weight}: must be in [0, 1]")
    if self.temperature <= 0:
      raise ValueError(f"--temperature={self.temperature}: must be > 0")


def student_config(vocab_size: int, d_model=128, n_layers=2, n_heads=2, head_dim=64, d_ff=512,
                   max_seq_len=512) -> ModelConfig:
  return get_config("nano_tiny").replace(
      name="nano_student", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
      n_heads=n_heads, n_kv_heads=1, head_dim=head_dim, d_ff=d_ff, max_seq_len=max_seq_len,
      dtype="float32")


def make_loss(cfg: ModelConfig, dc: DistillConfig):
  """loss_fn(params, batch, rng) for the step; batch may carry ids/values or teacher_logits."""
  def loss_fn(params, batch, rng):
    del rng
    logits = transformer.forward(params, {k: batch[k] for k in ("tokens", "segment_ids",
                                                                "positions")}, cfg)[0]
    w = (batch["segment_ids"] != 0).astype(jnp.float32)
    kw = {}
    if dc.mode == "full":
      kw["teacher_logits"] = batch["teacher_logits"]
    elif dc.mode in ("topk", "sampled"):
      kw = {"ids": batch["ids"], "values": batch["values"], "tempered": dc.mode == "topk"}
    hard = 1.0 if dc.mode == "none" else dc.hard_weight
    loss, m = losses.distill_loss(logits, batch["targets"], w, hard_weight=hard,
                                  temperature=dc.temperature, **kw)
    return loss, m
  return loss_fn


def make_step(cfg: ModelConfig, dc: DistillConfig, tc: TrainConfig, teacher=None):
  """Jitted step(state, host batch) -> (state, metrics); `teacher` (mode full) runs inside."""
  optimizer, schedule = make_optimizer(tc, spec.decay_mask(cfg)), lr_schedule(tc)
  loss_fn = make_loss(cfg, dc)
  t_forward = teacher_lib.logits_fn(teacher.cfg) if teacher is not None else None

  @jax.jit
  def jstep(state, batch, t_params):
    if t_forward is not None:
      batch = dict(batch, teacher_logits=jax.lax.stop_gradient(t_forward(t_params, batch["tokens"])))
    grads, metrics = step_lib.grads_and_metrics(loss_fn, state["params"], batch,
                                                step_lib.step_rng(state))
    return step_lib.apply_grads(state, grads, optimizer, schedule)[0], metrics

  t_params = teacher.params if teacher is not None else None

  def step(state, batch):
    return jstep(state, {k: jnp.asarray(v) for k, v in batch.items()}, t_params)
  return step, optimizer


def init_fn(cfg: ModelConfig, optimizer, seed: int):
  def init():
    params = transformer.init_params(cfg, jax.random.key(seed))
    return step_lib.init_state(params, optimizer, seed)
  return init


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--targets", required=True, help="teacher_targets --out directory")
  p.add_argument("--workdir", required=True)
  p.add_argument("--mode", default="topk", choices=MODES)
  p.add_argument("--k", type=int, default=64)
  p.add_argument("--hard_weight", type=float, default=0.0)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--steps", type=int, default=80)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--warmup_steps", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=20)
  p.add_argument("--log_every", type=int, default=10)
  for name, default in (("d_model", 128), ("n_layers", 2), ("n_heads", 2), ("head_dim", 64),
                        ("d_ff", 512)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--gguf", default="", help="teacher GGUF for --mode=full (default SmolLM2)")
  return p.parse_args(argv)


def run(args, teacher: Optional[Any] = None, log=print) -> Any:
  """Trains (or resumes) one student; returns its final train state."""
  with open(os.path.join(args.targets, "manifest.json")) as f:
    manifest = json.load(f)
  dc = DistillConfig(args.mode, args.k, args.hard_weight, args.temperature)
  data = data_lib.WindowData(args.targets, "train", args.batch_size, dc.mode, dc.k, args.seed)
  seq = data.windows.shape[1] - 1
  cfg = student_config(manifest["vocab_size"], args.d_model, args.n_layers, args.n_heads,
                       args.head_dim, args.d_ff, max(seq, 16))
  tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=seq, lr=args.lr,
                   warmup_steps=args.warmup_steps, seed=args.seed)
  if dc.mode == "full" and teacher is None:
    teacher = teacher_lib.load_teacher(args.gguf or None)
  step, optimizer = make_step(cfg, dc, tc, teacher if dc.mode == "full" else None)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "student.json"), "w") as f:
    json.dump({"config": dataclasses.asdict(cfg), "distill": dataclasses.asdict(dc),
               "train": {k: v for k, v in dataclasses.asdict(tc).items()
                         if k != "mixture_stages"}}, f, indent=1)
  return loop.run(args.workdir, init_fn(cfg, optimizer, args.seed), step, data, args.steps,
                  checkpoint_every=args.checkpoint_every, tokens_per_step=tc.tokens_per_step,
                  log=log, log_every=args.log_every, name=f"{dc.mode} step")


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
