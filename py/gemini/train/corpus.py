"""The bundled corpus for training: prepare it if absent, build its loader, measure it.

Built on `gemini.data` (prepare, Loader, Shard); see gemini/data/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np
import sentencepiece as spm

from gemini.data import prepare
from gemini.data.loader import Loader, Mixture, Shard, Stage


def manifest_path(root: str) -> str:
  return os.path.join(root, "manifest.json")


def ensure_corpus(root: str, log=print) -> str:
  """Runs `gemini.data.prepare --out=root` unless root/manifest.json exists and was made with
  prepare's current defaults (a corpus from an older prepare is made again); returns root."""
  stale = _stale_flags(root)
  if stale is None:
    return root
  if stale:
    log(f"re-preparing {root}: it was made with older prepare settings ({stale})")
  log(f"preparing the bundled corpus and tokenizer in {root} (first run only)")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  subprocess.run([sys.executable, "-m", "gemini.data.prepare", f"--out={root}"], env=env,
                 check=True)
  if not os.path.exists(manifest_path(root)):
    raise FileNotFoundError(f"gemini.data.prepare finished but wrote no {manifest_path(root)}")
  return root


def _stale_flags(root: str):
  """None if root holds a corpus made with prepare's defaults; else "" (no corpus) or the
  first differing flag as "name: had X, now Y"."""
  if not os.path.exists(manifest_path(root)):
    return ""
  want = {k: v for k, v in vars(prepare.parse_args([f"--out={root}"])).items()
          if k not in ("out", "cache_dir")}
  have = read_manifest(root).get("flags", {})
  for k, v in sorted(want.items()):
    if have.get(k) != v:
      return f"{k}: had {have.get(k)!r}, now {v!r}"
  return None


def read_manifest(root: str) -> dict:
  with open(manifest_path(root)) as f:
    return json.load(f)


def train_shards(root: str) -> Dict[str, List[str]]:
  """source name -> shard paths (absolute) of the training split."""
  manifest = read_manifest(root)
  sources = manifest.get("sources", {})
  out = {}
  for name, info in sources.items():
    if name == "heldout":
      continue
    paths = info.get("shards", []) if isinstance(info, dict) else info
    if paths:
      out[name] = [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
  if not out:
    raise ValueError(f"{manifest_path(root)}: no training sources under 'sources'")
  return out


def heldout_shards(root: str) -> List[str]:
  """Shard paths (absolute) of the held-out split (never trained on, decontaminated)."""
  paths = read_manifest(root).get("heldout", {}).get("shards", [])
  if not paths:
    raise ValueError(f"{manifest_path(root)}: no held-out shards under 'heldout'")
  return [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]


def tokenizer_path(root: str) -> str:
  manifest = read_manifest(root)
  path = manifest.get("tokenizer", os.path.join("tokenizer", "spm.model"))
  if isinstance(path, dict):
    path = path.get("path", os.path.join("tokenizer", "spm.model"))
  return path if os.path.isabs(path) else os.path.join(root, path)


def check_vocab(root: str, cfg) -> int:
  """The corpus' vocabulary size, after checking that every shard header, the tokenizer and
  the manifest agree on it and that the model's vocab_size covers it (it may be larger:
  padded embedding rows are never a target). ValueError naming the file otherwise."""
  tok_path = tokenizer_path(root)
  vocab = (spm.SentencePieceProcessor(model_file=tok_path).get_piece_size()
           if os.path.exists(tok_path) else None)
  listed = read_manifest(root).get("vocab_size")
  if vocab is not None and listed is not None and listed != vocab:
    raise ValueError(f"{manifest_path(root)}: vocab_size {listed} but the tokenizer {tok_path} "
                     f"has {vocab} pieces")
  vocab = vocab if vocab is not None else listed
  for paths in list(train_shards(root).values()) + [heldout_shards_or_empty(root)]:
    for path in paths:
      got = Shard(path, verify=False).vocab_size
      if vocab is None:
        vocab = got
      if got != vocab:
        raise ValueError(f"{path}: shard vocab_size {got} but the corpus' tokenizer "
                         f"{tok_path} has {vocab} pieces: the shard was made with another "
                         "tokenizer")
  if vocab is None:
    raise ValueError(f"{manifest_path(root)}: no tokenizer, vocab_size or shard to take the "
                     "vocabulary size from")
  if vocab > cfg.vocab_size:
    raise ValueError(f"{root}: the corpus' vocabulary has {vocab} ids but the model's "
                     f"vocab_size is {cfg.vocab_size} (--config.vocab_size={vocab})")
  return vocab


def heldout_shards_or_empty(root: str) -> List[str]:
  try:
    return heldout_shards(root)
  except ValueError:
    return []


def make_corpus_loader(root: str, cfg, tc, shard: int = 0, num_shards: int = 1,
                       batch_size: int = 0):
  """A Loader over the corpus at `root` with tc's seq_len, seed and staged mixture giving
  `batch_size` (default tc.batch_size) rows of data shard `shard` of `num_shards`
  (the C++ loader's process_index / process_count)."""
  check_vocab(root, cfg)
  shards = train_shards(root)
  mixture = None
  if tc.mixture_stages:
    stages = []
    for i, (_, weights) in enumerate(tc.mixture_stages):
      unknown = [k for k, _ in weights if k not in shards]
      if unknown:
        raise ValueError(f"--mixture_stages names sources {unknown}; {manifest_path(root)} "
                         f"has {sorted(shards)}")
      until = tc.mixture_stages[i + 1][0] if i + 1 < len(tc.mixture_stages) else None
      stages.append(Stage(until_batch=until, weights=dict(weights)))
    mixture = Mixture(stages)
  return Loader(sources=shards, batch_size=batch_size or tc.batch_size, seq_len=tc.seq_len,
                mixture=mixture, seed=tc.seed, process_index=shard, process_count=num_shards,
                vocab_size=cfg.vocab_size)


def unigram_entropy(root: str) -> float:
  """Entropy (nats/token) of the training split's token unigram distribution: the loss of
  the best model that ignores context."""
  counts = np.zeros(int(read_manifest(root).get("vocab_size", 1 << 16)), np.int64)
  for paths in train_shards(root).values():
    for path in paths:
      shard = Shard(path)
      for i in range(len(shard)):
        ids = np.asarray(shard.tokens(i), np.int64)
        if ids.size and ids.max() >= counts.size:
          counts = np.pad(counts, (0, int(ids.max()) + 1 - counts.size))
        counts += np.bincount(ids, minlength=counts.size)
  total = counts.sum()
  if total == 0:
    raise ValueError(f"{root}: the corpus has no tokens")
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum())
