"""`tools/bazel run //:demo`: watch a nano_tiny Gemini learn on this CPU in a few minutes.

1. Prepares the bundled corpus and its SentencePiece tokenizer if absent (gemini.data).
2. Prints samples from the untrained model, trains nano_tiny (~6M parameters) with the
   progress line (loss, tokens/s, MFU, ETA), prints samples again.
3. Prints the loss on fixed held-out batches (never trained on) before and after, next to
   the corpus's unigram entropy (the loss of the best context-free model): learning from
   context shows as a held-out loss well below it.
4. Leaves checkpoints, metrics.jsonl and loss.png in --workdir.
Training stops early to keep the whole demo within --budget_minutes (default 9).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time

# The demo runs on this machine's CPU; without this JAX (with libtpu installed for AOT compiles)
# first probes for a TPU and prints libtpu's start-up errors.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from gemini import config_flags, family, sharding
from gemini.data.loader import Loader
from gemini.data.tokenizer import Tokenizer
from gemini.model import decode
from gemini.train import corpus, train_flags
from gemini.train.checkpoint import describe_model
from gemini.train.evaluate import evaluate, take_batches
from gemini.train.metrics import loss_curve, read_metrics
from gemini.train.model_fns import gemini_model
from gemini.train.peak import measure_matmul_peak
from gemini.train.trainer import Trainer, use_compilation_cache

CONFIG = config_flags.define_config_flag("nano_tiny")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/gemini-demo", "Checkpoints, metrics, plot.")
_CORPUS = flags.DEFINE_string(
    "corpus_dir", os.path.join(os.path.expanduser("~"), ".cache", "gemini", "corpus"),
    "The bundled corpus (prepared here if absent).")
# steps=0: as many as the budget leaves (estimated from the measured matmul peak), so the
# learning-rate schedule runs to its end instead of being cut off. Batch 4 learnt more per
# second than 8 here (more updates for the same tokens).
TRAIN = train_flags.define(steps=0, batch_size=4, checkpoint_every=100)
_BUDGET = flags.DEFINE_float("budget_minutes", 9.0, "Wall-clock budget of the whole demo, "
                             "counted from when tools/bazel started (bootstrap, build and "
                             "corpus preparation included): training stops early to meet it.")
_FRESH = flags.DEFINE_bool("fresh", True, "Start over: delete this demo's previous checkpoints, "
                           "metrics and plot in --workdir.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 32, "Held-out batches evaluated before "
                                     "and after training.")
_SAMPLE_TOKENS = flags.DEFINE_integer("sample_tokens", 40, "Tokens generated per prompt.")

PROMPTS = ("In the beginning", "ROMEO:", "def read_file(path):", "The meaning of the word")


def invoked_seconds_ago() -> float:
  """Seconds since tools/bazel started this command (GEMINI_INVOKED_AT, epoch seconds), so
  the budget covers a first run's bootstrap; 0 when unset or implausible (> 1 h, future)."""
  try:
    ago = time.time() - float(os.environ.get("GEMINI_INVOKED_AT", ""))
  except ValueError:
    return 0.0
  return ago if 0 <= ago < 3600 else 0.0


# Fraction of the matmul peak a nano_tiny train step reaches here (measured 37-60%), and the
# seconds spent before the first step (step compile, held-out eval, samples).
_EXPECTED_MFU = 0.42
_SETUP_SECONDS = 40.0


def steps_for_budget(seconds: float, peak_flops: float, flops_per_step: float) -> int:
  """Steps that fit in `seconds` at _EXPECTED_MFU of `peak_flops`, within [20, 2000]."""
  step_seconds = flops_per_step / (_EXPECTED_MFU * peak_flops)
  return int(min(2000, max(20, (seconds - _SETUP_SECONDS) / step_seconds)))


def samples(params, cfg, tok, title: str) -> None:
  ids = [tok.encode(p, bos=True, eos=False) for p in PROMPTS]
  width = max(map(len, ids))
  prompt = np.zeros((len(ids), width), np.int32)
  seg = np.zeros((len(ids), width), np.int32)
  for i, x in enumerate(ids):
    prompt[i, width - len(x):] = x   # Left-pad: padding has segment id 0.
    seg[i, width - len(x):] = 1
  params = jax.device_get(params)
  out = decode.generate(params, jnp.asarray(prompt), cfg, _SAMPLE_TOKENS.value,
                        key=jax.random.key(1), temperature=0.8, top_k=40,
                        prompt_segment_ids=jnp.asarray(seg))
  print(f"\n--- samples {title} ---")
  for p, row in zip(PROMPTS, np.asarray(out).tolist()):
    print(f"{p!r} -> {tok.decode(row)!r}")
  print(flush=True)


def run(argv) -> None:
  logging.set_verbosity(logging.WARNING)
  t_start = time.perf_counter()
  t_invoked = t_start - invoked_seconds_ago()

  use_compilation_cache(os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"))
  root = corpus.ensure_corpus(_CORPUS.value)
  entropy = corpus.unigram_entropy(root)
  tok = Tokenizer(corpus.tokenizer_path(root))
  cfg = config_flags.resolve(CONFIG.value, config_flags.overrides(argv))
  workdir = _WORKDIR.value
  if _FRESH.value:
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    for name in ("metrics.jsonl", "loss.png"):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  os.makedirs(workdir, exist_ok=True)
  peak = measure_matmul_peak()
  deadline = t_invoked + 60 * _BUDGET.value - 45   # Leave time for samples and the summary.
  batch, seq = TRAIN["batch_size"].value, TRAIN["seq_len"].value
  steps = TRAIN["steps"].value or steps_for_budget(
      deadline - time.perf_counter(), peak,
      family.train_flops_per_token(cfg, seq) * batch * seq)
  warmup = TRAIN["warmup_steps"]
  tc = train_flags.train_config(
      TRAIN, steps=steps, warmup_steps=warmup.value if warmup.present else min(30, steps // 10))
  mesh = sharding.make_mesh({"data": jax.device_count()})
  print(f"corpus {root}: unigram entropy {entropy:.3f} nats/token; tokenizer vocab "
        f"{tok.vocab_size}\nmodel {cfg.name}: {family.total_params(cfg) / 1e6:.2f}M params; "
        f"batch {tc.batch_size}x{tc.seq_len}, {tc.steps} steps; matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s", flush=True)
  loader = corpus.make_corpus_loader(root, cfg, tc)
  trainer = Trainer(gemini_model(cfg, tc.seq_len), tc, mesh, loader, workdir, peak_flops=peak,
                    log=lambda s: print(s, flush=True), reference_loss=entropy,
                    describe=describe_model(cfg, corpus.tokenizer_path(root)))
  trainer.init_or_restore()
  held = Loader(sources={"heldout": corpus.heldout_shards(root)}, batch_size=tc.batch_size,
                seq_len=tc.seq_len, seed=0)
  eval_batches = take_batches(held, _EVAL_BATCHES.value)
  held.close()
  heldout_loss = lambda: evaluate(trainer.model.make_loss(trainer.mesh), trainer.state["params"],
                                  eval_batches, trainer.global_batch)
  before = heldout_loss()
  print(f"held-out loss before training: {before['loss']:.3f} nats/token over "
        f"{before['tokens']:,} tokens", flush=True)
  samples(trainer.state["params"], cfg, tok, "before training")
  if t_invoked < t_start - 1:
    print(f"budget {_BUDGET.value:g} min counted from tools/bazel's start "
          f"{t_start - t_invoked:.0f} s ago (bootstrap and build)", flush=True)
  trainer.run(stop=lambda: time.perf_counter() > deadline)
  trainer.close()
  samples(trainer.state["params"], cfg, tok, f"after {trainer.step} steps")
  curve = loss_curve(read_metrics(trainer.metrics.path))
  tail = [l for _, l in curve[-10:]]
  after = heldout_loss()
  gap = entropy - after["loss"]
  print(f"train loss (mean of the last {len(tail)} logged steps): "
        f"{sum(tail) / len(tail):.3f} nats/token\n"
        f"held-out loss: {before['loss']:.3f} before -> {after['loss']:.3f} after "
        f"{trainer.step} steps (top-1 accuracy {after['accuracy']:.1%}), over "
        f"{after['tokens']:,} tokens\n"
        f"corpus unigram entropy: {entropy:.3f} nats/token -> the held-out loss is "
        f"{abs(gap):.3f} nats/token {'below' if gap > 0 else 'ABOVE'} it "
        f"(perplexity {math.exp(after['loss']):,.0f} vs {math.exp(entropy):,.0f})")
  print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}; metrics: {trainer.metrics.path}; "
        f"plot: {os.path.join(workdir, 'loss.png')}; total {time.perf_counter() - t_start:.0f} s "
        f"({time.perf_counter() - t_invoked:.0f} s since tools/bazel started)")
  loader.close()


def main():
  app.run(run, flags_parser=config_flags.flags_parser)


if __name__ == "__main__":
  sys.exit(main())
