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

import jax
from absl import app, flags, logging

from gemini import config_flags, family, sharding
from gemini.train import corpus, host_malloc, train_flags
from gemini.train.checkpoint import CheckpointError, describe_model
from gemini.train.data_shards import DataShards, needed_shards
from gemini.train.memory import StepMemoryError
from gemini.train.model_fns import gemini_model
from gemini.train.peak import measure_matmul_peak
from gemini.train.synthetic import SyntheticLoader
from gemini.train.trainer import (DivergenceError, Trainer, params_to_host, save_params_npz,
                                  use_compilation_cache)

CONFIG = config_flags.define_config_flag("nano_tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and loss.png go here.")
_DATA = flags.DEFINE_string("data", "", "Corpus dir with manifest.json, or 'synthetic'. Empty: "
                            "the bundled corpus in --corpus_dir.")
_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", os.path.join(os.path.expanduser("~"), ".cache", "gemini", "corpus"),
    "Where the bundled corpus is prepared when --data is empty.")
_MESH = flags.DEFINE_string("mesh", "", "Mesh axes, e.g. data=2,fsdp=4 (default: data=#devices).")
TRAIN = train_flags.define()
_DATA_SHARDS = flags.DEFINE_integer(
    "data_shards", 0, "Blocks the global batch's rows are read in, each from its own loader "
    "stream; each process reads only the blocks its devices hold (0: one per process). The "
    "data depends on this number, not on the number of processes.")
_ATTN = flags.DEFINE_string("attn_impl", "xla", "Attention kernel (xla | flash | ring).")
_MOE = flags.DEFINE_string(
    "moe_impl", "tiled", "MoE implementation (gemini.model.moe.IMPLS): tiled (dense batched "
    "dots over per-expert row tiles, the CPU choice; equals xla up to f32 summation order), "
    "xla (lax.ragged_dot, a slow loop on XLA:CPU) or pallas.")
_MALLOC = flags.DEFINE_bool("tune_malloc", True, "glibc malloc settings at start-up "
                            "(host_malloc.py: XLA:CPU's per-step buffers reused, not faulted in).")
_PEAK = flags.DEFINE_bool("measure_peak", True, "Measure the matmul peak for MFU at start-up.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-host run.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "gemini", "jax_cache"),
    "Persistent XLA compilation cache (empty: off); makes resumes start fast.")
_NPZ = flags.DEFINE_string("final_params_npz", "", "Write the final params here (.npz).")


def make_loader(data: str, cfg, tc, corpus_dir: str, mesh, num_shards: int):
  """The loader for --data: this process's blocks of `num_shards` (see data_shards.py)."""
  if data == "synthetic":
    make = lambda j, n, rows: SyntheticLoader(cfg.vocab_size, rows, tc.seq_len, seed=tc.seed,
                                              shard=j, num_shards=n)
  else:
    root = data or corpus.ensure_corpus(corpus_dir)
    corpus.check_vocab(root, cfg)
    make = lambda j, n, rows: corpus.make_corpus_loader(root, cfg, tc, j, n, rows)
  shape = (tc.batch_size, tc.seq_len)
  mine = needed_shards(sharding.batch_sharding(mesh, shape), shape, num_shards)
  print(f"process {jax.process_index()}: reads data shard(s) {mine} of {num_shards} "
        f"({tc.batch_size // num_shards} rows each)", flush=True)
  return DataShards(make, tc.batch_size, tc.seq_len, num_shards, mine)


def tokenizer_of(data: str, corpus_dir: str):
  """The tokenizer file of --data (None for synthetic data)."""
  if data == "synthetic":
    return None
  path = corpus.tokenizer_path(data or corpus_dir)
  return path if os.path.exists(path) else None


def run(argv) -> None:
  malloc_note = host_malloc.tune() if _MALLOC.value else "malloc: glibc defaults"
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO.
  if _NPROC.value > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                               process_id=_PID.value)

  use_compilation_cache(_CACHE.value)

  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  try:
    cfg = config_flags.resolve(CONFIG.value, config_flags.overrides(argv))
    tc = train_flags.train_config(TRAIN)
    mesh_axes = config_flags.parse_mesh(_MESH.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  mesh = sharding.make_mesh(mesh_axes or {"data": jax.device_count()})
  try:
    loader = make_loader(_DATA.value, cfg, tc, _CORPUS_DIR.value, mesh,
                         _DATA_SHARDS.value or jax.process_count())
  except (ValueError, FileNotFoundError) as e:
    print(f"{sys.argv[0]}: cannot read the data: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  peak = measure_matmul_peak() if _PEAK.value else None
  is_main = jax.process_index() == 0
  if is_main:
    print(f"model {cfg.name}: {family.total_params(cfg) / 1e6:.2f}M params "
          f"({family.active_params(cfg) / 1e6:.2f}M active), "
          f"{family.train_flops_per_token(cfg, tc.seq_len) / 1e6:.1f} MFLOP/token; "
          f"mesh {dict(mesh.shape)} on {jax.device_count()} devices / {jax.process_count()} "
          f"process(es); batch {tc.batch_size}x{tc.seq_len}"
          + (f"; matmul peak {peak / 1e9:.1f} GFLOP/s" if peak else "") + f"; {malloc_note}",
          flush=True)
  trainer = Trainer(gemini_model(cfg, tc.seq_len, _ATTN.value, _MOE.value), tc, mesh, loader,
                    _WORKDIR.value, peak_flops=peak, log=lambda s: print(s, flush=True),
                    describe=describe_model(cfg, tokenizer_of(_DATA.value, _CORPUS_DIR.value)))
  t0 = time.perf_counter()
  try:
    trainer.run()
    trainer.close()
  except (DivergenceError, StepMemoryError, CheckpointError) as e:
    if trainer.ckpt:
      trainer.ckpt.wait()
    print(f"{sys.argv[0]}: stopped: {e}", file=sys.stderr, flush=True)
    sys.exit(3)
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
