"""`tools/bazel run //py/gemini/train -- --config=nano_tiny --workdir=DIR [--steps N]
[--mesh data=2,fsdp=4] [--config.d_model=128 ...]`

Trains a Gemini-family model on a mesh of this machine's devices (or of many hosts with
--coordinator_address/--num_processes/--process_id), printing a progress line (loss,
tokens/s, MFU against the matmul peak measured at start-up, ETA), writing
DIR/metrics.jsonl, DIR/loss.png and Orbax checkpoints in DIR/checkpoints, and resuming
from the newest checkpoint when DIR already has one.

Data (--data): a prepared corpus directory (its manifest.json, see gemini/data/README.md),
by default the bundled corpus in --corpus_dir (prepared on first use), or `synthetic` (a
seeded learnable token stream, for benchmarks and tests).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from gemini import config_flags

CONFIG = config_flags.define_config_flag("nano_tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and loss.png go here.")
_DATA = flags.DEFINE_string("data", "", "Corpus dir with manifest.json, or 'synthetic'. Empty: "
                            "the bundled corpus in --corpus_dir.")
_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", os.path.join(os.path.expanduser("~"), ".cache", "gemini", "corpus"),
    "Where the bundled corpus is prepared when --data is empty.")
_MESH = flags.DEFINE_string("mesh", "", "Mesh axes, e.g. data=2,fsdp=4 (default: data=#devices).")
_STEPS = flags.DEFINE_integer("steps", 200, "Optimizer updates.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global sequences per update.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_ACCUM = flags.DEFINE_integer("grad_accum", 1, "Microbatches per update.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps.")
_MIN_LR = flags.DEFINE_float("min_lr_ratio", 0.1, "Final lr / peak lr of the cosine.")
_WD = flags.DEFINE_float("weight_decay", 0.1, "AdamW decay on matrices (not norms/embeddings).")
_CLIP = flags.DEFINE_float("clip_norm", 1.0, "Global gradient-norm clip (0: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Init and data seed.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 50, "Checkpoint cadence (0: off).")
_KEEP = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Progress line cadence.")
_REPLICA = flags.DEFINE_integer("replica_every", 0, "In-memory state copy cadence (0: off).")
_SDC = flags.DEFINE_integer("sdc_every", 0, "SDC replay check cadence (0: off).")
_MIXTURE = flags.DEFINE_string("mixture_stages", "",
                               "Staged mixture, e.g. '0:bible=0.8,code=0.2;300:bible=0.5,code=0.5'.")
_ATTN = flags.DEFINE_string("attn_impl", "xla", "Attention kernel (xla | flash | ring).")
_MOE = flags.DEFINE_string("moe_impl", "xla", "MoE kernel.")
_PEAK = flags.DEFINE_bool("measure_peak", True, "Measure the matmul peak for MFU at start-up.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-host run.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"),
    "Persistent XLA compilation cache (empty: off); makes resumes start fast.")
_NPZ = flags.DEFINE_string("final_params_npz", "", "Write the final params here (.npz).")


def parse_mesh(text: str) -> dict:
  """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, size = part.partition("=")
    if not sep or not size.strip().isdigit():
      raise ValueError(f"--mesh={text!r}: expected NAME=SIZE[,NAME=SIZE...], got {part!r}")
    out[name.strip()] = int(size)
  return out


def train_config_from_flags():
  from gemini.train.train_config import TrainConfig, parse_mixture_stages
  return TrainConfig(
      steps=_STEPS.value, batch_size=_BATCH.value, seq_len=_SEQ.value, grad_accum=_ACCUM.value,
      lr=_LR.value, warmup_steps=_WARMUP.value, min_lr_ratio=_MIN_LR.value,
      weight_decay=_WD.value, clip_norm=_CLIP.value, seed=_SEED.value,
      checkpoint_every=_CKPT_EVERY.value, keep_checkpoints=_KEEP.value,
      log_every=_LOG_EVERY.value, replica_every=_REPLICA.value, sdc_every=_SDC.value,
      mixture_stages=parse_mixture_stages(_MIXTURE.value))


def make_loader(data: str, cfg, tc, corpus_dir: str):
  """The loader for --data (every process reads the same global batch stream)."""
  if data == "synthetic":
    from gemini.train.synthetic import SyntheticLoader
    return SyntheticLoader(cfg.vocab_size, tc.batch_size, tc.seq_len, seed=tc.seed)
  from gemini.train import corpus
  root = data or corpus.ensure_corpus(corpus_dir)
  return corpus.make_corpus_loader(root, cfg, tc)


def run(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO.
  import jax
  if _NPROC.value > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                               process_id=_PID.value)
  from gemini import family, sharding
  from gemini.train.model_fns import gemini_model
  from gemini.train.peak import measure_matmul_peak
  from gemini.train.trainer import Trainer, params_to_host, save_params_npz, use_compilation_cache

  use_compilation_cache(_CACHE.value)

  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cfg = config_flags.resolve(CONFIG.value, config_flags.overrides())
  tc = train_config_from_flags()
  mesh = sharding.make_mesh(parse_mesh(_MESH.value) or {"data": jax.device_count()})
  loader = make_loader(_DATA.value, cfg, tc, _CORPUS_DIR.value)
  peak = measure_matmul_peak() if _PEAK.value else None
  is_main = jax.process_index() == 0
  if is_main:
    print(f"model {cfg.name}: {family.total_params(cfg) / 1e6:.2f}M params "
          f"({family.active_params(cfg) / 1e6:.2f}M active), "
          f"{family.train_flops_per_token(cfg, tc.seq_len) / 1e6:.1f} MFLOP/token; "
          f"mesh {dict(mesh.shape)} on {jax.device_count()} devices / {jax.process_count()} "
          f"process(es); batch {tc.batch_size}x{tc.seq_len}"
          + (f"; matmul peak {peak / 1e9:.1f} GFLOP/s" if peak else ""), flush=True)
  trainer = Trainer(gemini_model(cfg, tc.seq_len, _ATTN.value, _MOE.value), tc, mesh, loader,
                    _WORKDIR.value, peak_flops=peak,
                    log=lambda s: print(s, flush=True))
  t0 = time.perf_counter()
  trainer.run()
  trainer.close()
  if is_main:
    rep = trainer.goodput.report()
    print(f"done: step {trainer.step} in {time.perf_counter() - t0:.1f}s, goodput "
          f"{100 * rep['goodput']:.1f}%; metrics {os.path.join(_WORKDIR.value, 'metrics.jsonl')}",
          flush=True)
  if _NPZ.value:
    host = params_to_host(trainer.state["params"])
    if is_main:
      save_params_npz(host, _NPZ.value)
  if hasattr(loader, "close"):
    loader.close()


def main():
  app.run(run, flags_parser=config_flags.flags_parser)


if __name__ == "__main__":
  sys.exit(main())
