"""End to end: staged data mixtures switch at the configured step and are recorded.

Two sources with disjoint token ranges (low: 10-19, high: 100-109) are written as real
shards; the run's stages are "0:low=1,high=0;3:low=0,high=1". The batches the trainer
consumes hold only low tokens for steps 1-3 and only high tokens from step 4, and
metrics.jsonl records both switches and the weights in force at every step.
"""

import json
import os

import numpy as np

from gemini import config_flags, sharding
from gemini.data import shard_writer
from gemini.train import corpus
from gemini.train.metrics import read_metrics
from gemini.train.model_fns import gemini_model
from gemini.train.train_config import TrainConfig, parse_mixture_stages
from gemini.train.trainer import Trainer, use_compilation_cache

TINY = {"d_model": "64", "n_layers": "2", "n_heads": "2", "head_dim": "32", "d_ff": "128",
        "vocab_size": "256"}
use_compilation_cache("/tmp/gemini-jax-cache")


def _corpus(root):
  rng = np.random.default_rng(0)
  manifest = {"vocab_size": 256, "sources": {}}
  for name, lo in (("low", 10), ("high", 100)):
    # 9-token documents give 8 (input, target) pairs: exactly half a 16-token row.
    docs = [rng.integers(lo, lo + 10, size=9) for _ in range(64)]
    paths = shard_writer.write_shards(docs, os.path.join(root, "shards", name), 256)
    manifest["sources"][name] = {"shards": [os.path.relpath(p, root) for p in paths]}
  with open(os.path.join(root, "manifest.json"), "w") as f:
    json.dump(manifest, f)


class Recording:
  def __init__(self, loader):
    self.loader, self.batches = loader, []

  def next(self):
    b = self.loader.next()
    self.batches.append(b)
    return b

  def state(self):
    return self.loader.state()

  def restore(self, s):
    self.loader.restore(s)


def test_stages_switch_and_are_recorded(tmp_path):
  root = str(tmp_path / "corpus")
  _corpus(root)
  cfg = config_flags.resolve("nano_tiny", TINY)
  tc = TrainConfig(steps=5, batch_size=2, seq_len=16, checkpoint_every=0, log_every=0,
                   mixture_stages=parse_mixture_stages("0:low=1,high=0;3:low=0,high=1"))
  loader = Recording(corpus.make_corpus_loader(root, cfg, tc))
  t = Trainer(gemini_model(cfg, tc.seq_len), tc, sharding.make_mesh({"data": 1}), loader,
              str(tmp_path / "work"), log=print)
  t.run()
  assert len(loader.batches) == 5
  for step, b in enumerate(loader.batches, start=1):
    toks = b["tokens"]
    if step <= 3:
      assert toks.min() >= 10 and toks.max() < 20, (step, toks)
    else:
      assert toks.min() >= 100 and toks.max() < 110, (step, toks)
  records = read_metrics(str(tmp_path / "work" / "metrics.jsonl"))
  events = [(r["step"], r["weights"]) for r in records if r.get("event") == "mixture"]
  assert events == [(0, {"low": 1.0, "high": 0.0}), (3, {"low": 0.0, "high": 1.0})]
  by_step = {r["step"]: r["mixture"] for r in records if "loss" in r}
  assert by_step[3] == {"low": 1.0, "high": 0.0} and by_step[4] == {"low": 0.0, "high": 1.0}
