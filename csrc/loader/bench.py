"""Loader throughput: C++ loader (1 and 2 threads) vs a plain Python/NumPy loader doing the
same packing vs Grain (ConcatThenSplit packing) over the same records, in one run, and the
ratio to what nano_tiny training consumes.

  tools/bazel run //csrc/loader:bench [-- --quick] [-- --corpus=DIR (a prepare output)]

nano_tiny's consumption is the stated figure batch 4 x seq 256 tokens per ~1 s train step on
this CPU (override with --train_tokens_per_s when measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from gemini.data import shard_writer
from gemini.data.loader import Loader
from gemini.data.reference_loader import ReferenceLoader, read_shard_tokens


def synthetic_shards(tmp: str, n_docs: int, seed: int = 0):
  """Documents with a heavy-tailed length distribution (like real text), vocab 8192."""
  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(5.5, 1.0, n_docs).astype(int), 2, 20_000)
  docs = [rng.integers(0, 8192, n) for n in lengths]
  paths = shard_writer.write_shards(docs, tmp, 8192, max_bytes=8 << 20)
  return {"synthetic": paths}


def corpus_shards(root: str):
  import json  # pylint: disable=import-outside-toplevel
  with open(os.path.join(root, "manifest.json")) as f:
    m = json.load(f)
  return {n: [os.path.join(root, p) for p in i["shards"]] for n, i in m["sources"].items()}


def timed(name, make_iter, batches, tokens_per_batch, warmup=3):
  it = make_iter()
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  return name, tokens_per_batch * batches / dt


def grain_iter(paths_by_source, B, S, seed):
  import grain  # pylint: disable=import-outside-toplevel
  from grain import experimental as gx  # pylint: disable=import-outside-toplevel
  from csrc.loader import _loader  # pylint: disable=import-outside-toplevel

  class Records:  # Random access over the same mmap'd shards (zero-copy record views).
    def __init__(self, paths):
      self.shards = [_loader.Shard(p) for ps in paths.values() for p in ps]
      self.index = [(s, i) for s in self.shards for i in range(len(s))]

    def __len__(self):
      return len(self.index)

    def __getitem__(self, k):
      s, i = self.index[k]
      t = s.tokens(i).astype(np.int32)
      return {"tokens": t[:-1], "targets": t[1:]}

  ds = (grain.MapDataset.source(Records(paths_by_source)).shuffle(seed=seed).repeat()
        .filter(lambda r: len(r["tokens"]) > 0).to_iter_dataset())
  ds = gx.ConcatThenSplitIterDataset(ds, length_struct={"tokens": S, "targets": S})
  return iter(ds.batch(B))


def main(argv):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true", help="short CI form")
  p.add_argument("--corpus", default="", help="use a prepare output instead of synthetic data")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--train_tokens_per_s", type=float, default=4 * 256 / 1.0,
                 help="nano_tiny consumption (stated: batch 4 x seq 256 per ~1 s step)")
  a = p.parse_args(argv)
  B, S = a.batch, a.seq
  n = 20 if a.quick else a.batches
  with tempfile.TemporaryDirectory() as tmp:
    if a.corpus:
      base = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
      paths = corpus_shards(os.path.join(base, a.corpus))
    else:
      paths = synthetic_shards(tmp, 2000 if a.quick else 20000)
    n_tok = sum(os.path.getsize(p) for ps in paths.values() for p in ps) // 2
    print(f"records: {sum(len(v) for v in paths.values())} shard files, ~{n_tok / 1e6:.1f}M "
          f"tokens; batch {B} x seq {S}; {n} timed batches")
    docs = {k: [d for ps in v for d in read_shard_tokens(ps)] for k, v in paths.items()}
    rows = []
    rows.append(timed("python/numpy (same packing)",
                      lambda: iter(ReferenceLoader(docs, B, S, seed=0).next, None), n, B * S))
    for threads in (1, 2):
      def make(threads=threads):
        l = Loader(paths, B, S, seed=0, threads=threads, prefetch=8)
        return iter(l.next, None)
      rows.append(timed(f"c++ loader, {threads} thread{'s' if threads > 1 else ''}", make,
                        n * 4, B * S))
    try:
      rows.append(timed("grain (ConcatThenSplit)", lambda: grain_iter(paths, B, S, 0), n, B * S))
    except Exception as e:  # pylint: disable=broad-except
      print(f"grain: not measured ({type(e).__name__}: {e})")
  base = rows[0][1]
  print(f"\n{'loader':<30}{'tokens/s':>14}{'x python':>10}{'x nano_tiny':>13}")
  for name, tps in rows:
    print(f"{name:<30}{tps:>14,.0f}{tps / base:>10.2f}{tps / a.train_tokens_per_s:>13.0f}")
  print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a shared machine "
        f"makes the 2-thread row pessimistic).")
  print(f"nano_tiny training consumes ~{a.train_tokens_per_s:,.0f} tokens/s "
        f"(batch 4 x seq 256 per ~1 s step, stated figure).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
