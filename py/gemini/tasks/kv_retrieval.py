"""Long-context key-value retrieval (the Gemini 1.0 report's needle test), trained with ring
attention over a `context` mesh axis (8 fake CPU devices by default; attention impl
"ring_xla": the ppermute ring with XLA blocks, since interpreted flash kernels are slow here).

Each sequence of length L is filler tokens with P key/value pairs at random positions (keys
distinct within a sequence), then `--queries` questions `? key` at the end; the model must
emit each key's value. The loss is on the answers only. Evaluation forces the last queried
pair to sit at each depth d in {0, 0.1, ..., 1.0} of the context (d = pair position / L) and
reports exact-match accuracy per depth and context length (heat-map PNG).

    tokens: 0 pad, 1 bos, 2 query '?', then keys, values, filler
    [bos] f f k1 v1 f f f k2 v2 ... f f [?] k_j  ->  v_j

Training is a curriculum (`--stages`, then the main stage at --seq_len with ring attention):
  copy@64   spans copied to random later places, loss on every copied token (make_copy_batch):
            dense supervision that forms the content-matched (induction) attention retrieval
            needs; retrieval alone, with a few answers a context, never left the plateau
  kv@64     retrieval at a short length, where that circuit takes over in a few hundred steps
  kv@256    a longer context (a model trained at 64 retrieves poorly at 256 and 1,024)
  kv@1024   the same again, still on one device
  main      retrieval at --seq_len (4,096) over the ring

The trained weights go to OUT/params.npz; `--params=OUT/params.npz` evaluates them again
without training.

    tools/bazel run //py/gemini/tasks:kv_retrieval -- [--seq_len=4096] [--steps=N] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gemini import sharding  # noqa: E402
from gemini.config import get_config  # noqa: E402
from gemini.model import transformer  # noqa: E402
from gemini.tasks import common  # noqa: E402

BOS, QUERY = 1, 2
DEFAULT_STAGES = "copy@64:3000x16,kv@64:500x16,kv@256:300,kv@1024:200"
DEPTHS = tuple(round(0.1 * i, 1) for i in range(11))


class Layout:
  """Token id ranges for n_keys keys, n_values values and n_filler filler tokens."""

  def __init__(self, n_keys: int = 128, n_values: int = 32, n_filler: int = 64):
    self.key0 = 3
    self.val0 = self.key0 + n_keys
    self.fill0 = self.val0 + n_values
    self.n_keys, self.n_values, self.n_filler = n_keys, n_values, n_filler
    self.vocab = self.fill0 + n_filler


def make_example(rng: np.random.Generator, lay: Layout, seq_len: int, pairs: int,
                 depth: float = -1.0, queries: int = 1, repeats: int = 1):
  """-> (tokens [seq_len], supervised positions, answer ids [queries], needle position).

  The context ends in `queries` questions about distinct pairs, `? k v ? k v ... ? k`, each
  answer the next token: training gets `queries` answers from one long context instead of
  one. The last question is the needle: depth >= 0 places its pair at that depth, and the
  sequence's last position predicts its value (what evaluation reads). repeats > 1 (training)
  writes every pair that many times in the filler and also supervises each value after its
  first occurrence: the same copy-the-value-after-this-key circuit, supervised on more tokens
  a context (at L=32 it did not end the plateau in 6,000 steps; eval/README.md)."""
  body = seq_len - 3 * queries                     # bos, body, then 3 tokens a question but the last
  if body < 2 * pairs * repeats:
    raise ValueError(f"seq_len={seq_len} holds no {pairs} pairs x {repeats} and {queries} "
                     "questions")
  if depth >= 0 and repeats > 1:
    raise ValueError("a needle at a depth is written once (repeats=1)")
  toks = rng.integers(lay.fill0, lay.fill0 + lay.n_filler, body)
  keys = rng.choice(lay.n_keys, pairs, replace=False) + lay.key0
  vals = rng.integers(0, lay.n_values, pairs) + lay.val0
  slots = rng.choice(body // 2, pairs * repeats, replace=False) * 2   # even offsets: disjoint
  owner = np.tile(np.arange(pairs), repeats)
  asked = rng.choice(pairs, queries, replace=False)
  j = int(asked[-1])
  if depth >= 0:
    want = min(int(depth * (body - 2)) // 2 * 2, body - 2)
    clash = np.flatnonzero(slots == want)
    if clash.size and clash[0] != j:
      slots[clash[0]] = slots[j]
    slots[j] = want
  for i, s in zip(owner, slots):
    toks[s], toks[s + 1] = keys[i], vals[i]
  tail = np.stack([np.full(queries, QUERY), keys[asked], vals[asked]], 1).reshape(-1)[:-1]
  seq = np.concatenate([[BOS], toks, tail]).astype(np.int32)
  positions = [1 + body + 3 * i + 1 for i in range(queries)]
  for i in range(pairs if repeats > 1 else 0):
    positions += [1 + int(s) for s in np.sort(slots[owner == i])[1:]]   # keys seen before
  return seq, positions, [int(v) for v in vals[asked]], int(slots[j]) + 1


def make_batch(rng, lay: Layout, batch: int, seq_len: int, pairs: int, depth: float = -1.0,
               queries: int = 1, repeats: int = 1):
  toks = np.zeros((batch, seq_len + 1), np.int32)
  mask = np.zeros((batch, seq_len), np.float32)
  for b in range(batch):
    seq, pos, ans, _ = make_example(rng, lay, seq_len, pairs, depth, queries, repeats)
    toks[b, :seq_len] = seq
    toks[b, seq_len] = ans[-1]
    mask[b, pos] = 1.0
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
          "segment_ids": np.ones((batch, seq_len), np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
          "loss_mask": mask}


def make_copy_batch(rng, lay: Layout, batch: int, seq_len: int):
  """The induction stage's batch: a run of h distinct key/value tokens (h random, 4 up to half
  the context) written twice at random offsets in filler; the loss is on every token of the
  second copy after its first, each predicted from what followed the same token in the first.

  Why it comes first: retrieval is the same two-head circuit (an earlier head writes "the
  token before me" into each position, a later head matches the current token against it and
  copies what it finds), but a retrieval context supervises only its few answers, and every
  run trained on retrieval alone stayed on the plateau where the model picks one of the
  context's values (eval/README.md). Here up to half of each context is supervised, and the
  offsets vary, so copying by position does not pass (a fixed-offset copy was learnt by
  position in 150 steps and did not transfer)."""
  toks = np.zeros((batch, seq_len + 1), np.int32)
  mask = np.zeros((batch, seq_len), np.float32)
  pool = lay.n_keys + lay.n_values
  for b in range(batch):
    h = int(rng.integers(4, min(seq_len // 2, pool) + 1))
    run = rng.choice(pool, h, replace=False) + lay.key0
    fill = rng.integers(lay.fill0, lay.vocab, seq_len + 1)
    gap = int(rng.integers(0, seq_len - 2 * h + 1))          # filler tokens outside the copies
    g0, g1 = np.sort(rng.integers(0, gap + 1, 2))            # before, between, after
    row = np.concatenate([[BOS], fill[:g0], run, fill[g0:g1], run, fill[g1:]])[:seq_len + 1]
    toks[b] = row
    second = 1 + g0 + h + (g1 - g0)                          # where the second copy starts
    mask[b, second:second + h - 1] = 1.0                     # each predicts run[1:]
  return {"tokens": toks[:, :-1], "targets": toks[:, 1:],
          "segment_ids": np.ones((batch, seq_len), np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
          "loss_mask": mask}


def task_config(lay: Layout, seq_len: int, preset: str = "small"):
  """preset "small" (the default): flash_tiny with `common.small_decoder` (2 layers: an
  induction circuit needs two); else a named preset."""
  base = (common.small_decoder(get_config("flash_tiny"), "small") if preset == "small"
          else get_config(preset))
  return base.replace(name=f"{preset}_kv", vocab_size=lay.vocab, max_seq_len=seq_len,
                      dtype="float32")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_argmax(params, batch, cfg):
  """The prediction at each row's last position; one compile per (cfg, shape), shared by
  every depth evaluated."""
  logits = transformer.forward(params, batch, cfg, moe_impl="tiled")[0]   # as in training
  return jax.numpy.argmax(logits[:, -1], -1)


def accuracy_at(params, cfg, lay, seq_len, pairs, depth, n, rng, batch=8, queries=1) -> float:
  """Exact answers to the needle, the last of `queries` questions (as in training), its pair
  at `depth` of the context."""
  hits = 0
  for lo in range(0, n, batch):
    b = make_batch(rng, lay, batch, seq_len, pairs, depth, queries)
    pred = np.asarray(_last_argmax(params, {k: b[k] for k in ("tokens", "segment_ids",
                                                             "positions")}, cfg))
    hits += int(np.sum((pred == b["targets"][:, -1])[:min(batch, n - lo)]))
  return hits / n


def heatmap(acc: dict, lengths, png: str, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  grid = np.asarray([[acc[(l, d)] for d in DEPTHS] for l in lengths])
  fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(lengths)))
  im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
  ax.set_xticks(range(len(DEPTHS)), [f"{d:.0%}" for d in DEPTHS])
  ax.set_yticks(range(len(lengths)), [str(l) for l in lengths])
  for i in range(grid.shape[0]):
    for j in range(grid.shape[1]):
      ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xlabel("needle depth")
  ax.set_ylabel("context length")
  ax.set_title(title)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--seq_len", type=int, default=4096)
  p.add_argument("--pairs", type=int, default=16)
  p.add_argument("--keys", type=int, default=128, help="key vocabulary (distinct keys)")
  p.add_argument("--values", type=int, default=32, help="value vocabulary")
  p.add_argument("--steps", type=int, default=160)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--context", type=int, default=8, help="ring size (mesh axis 'context')")
  p.add_argument("--attn", default="ring_xla", choices=("ring_xla", "ring", "xla"),
                 help="training attention: ring_xla (the ppermute ring over --context devices, "
                 "XLA blocks), ring (the same ring over the flash kernels, interpreted on a "
                 "CPU: slow), xla (one device, no ring)")
  p.add_argument("--preset", default="small", help="small | flash_tiny | pro_tiny | ...")
  p.add_argument("--queries", type=int, default=4, help="questions at the end of each "
                 "training context (each answer is a supervised token)")
  p.add_argument("--stages", default=DEFAULT_STAGES, help="stages before the main one, "
                 "KIND@LENGTH:STEPS[xBATCH] comma-separated, KIND copy (make_copy_batch) or kv, "
                 "BATCH default --batch; on one device, XLA attention ('' for none)")
  p.add_argument("--repeats", type=int, default=1, help="training: each pair written this "
                 "many times, every value after its key's first occurrence supervised")
  p.add_argument("--eval_n", type=int, default=64, help="queries per (length, depth)")
  p.add_argument("--quick", action="store_true", help="CI short form: L=128, 30 steps")
  p.add_argument("--params", default="", help="params.npz of an earlier run (its out "
                 "folder): skip training, evaluate these")
  p.add_argument("--out", default="")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  if a.quick:
    a.seq_len, a.steps, a.pairs, a.eval_n, a.batch = 128, 30, 4, 8, 8
    a.stages = "copy@32:10,kv@64:10"
  a.stage_list = parse_stages(a.stages, p.error, a.batch)
  return a


def parse_stages(spec: str, error, batch: int) -> list:
  """'copy@64:2000x16,kv@256:300' -> [("copy", 64, 2000, 16), ("kv", 256, 300, batch)];
  error(msg) on a malformed entry (argparse's: exits naming the flag)."""
  out = []
  for item in filter(None, spec.split(",")):
    m = re.fullmatch(r"(copy|kv)@(\d+):(\d+)(?:x(\d+))?", item)
    if not m:
      error(f"--stages: {item!r} is not KIND@LENGTH:STEPS[xBATCH] with KIND copy or kv")
    kind, length, steps, b = m.groups()
    out.append((kind, int(length), int(steps), int(b or batch)))
  return out


def train_curriculum(a, lay: Layout, cfg, mesh, out: str, log) -> dict:
  """The --stages curriculum, then the main stage at --seq_len; writes out/params.npz."""
  rng = np.random.default_rng(a.seed)
  params = None
  # The stages before the main one run on one device: at a few hundred tokens a ring of 8 is
  # all overhead.
  def batches(kind, length, batch):
    if kind == "copy":
      return lambda s: make_copy_batch(rng, lay, batch, length)
    pairs = min(a.pairs, (length - 3 * a.queries) // (2 * a.repeats))  # what the length holds
    return lambda s: make_batch(rng, lay, batch, length, pairs, queries=a.queries,
                                repeats=a.repeats)

  stages = [(f"{i}_{kind}", length, steps, batches(kind, length, b), "xla", None)
            for i, (kind, length, steps, b) in enumerate(a.stage_list)]
  stages.append(("main", a.seq_len, a.steps, batches("kv", a.seq_len, a.batch), a.attn, mesh))
  for name, length, steps, next_batch, attn, on in stages:
    if not steps:
      continue
    workdir = out if name == "main" else os.path.join(out, f"stage{name}_L{length}")
    log(f"kv_retrieval: {name} stage at L={length} for {steps} steps, attention {attn}")
    os.makedirs(workdir, exist_ok=True)
    params = common.train(cfg, next_batch, steps, workdir, lr=a.lr, seed=a.seed,
                          attn_impl=attn, mesh=on, log_every=10 if name == "main" else 100,
                          log=log, params=params)
  log(f"kv_retrieval: parameters in {common.save_params(params, out)}")
  return params


def run(argv=None, log=print) -> dict:
  a = parse(sys.argv[1:] if argv is None else argv)
  out = a.out or common.results_dir("kv_retrieval" + ("_quick" if a.quick else ""))
  os.makedirs(out, exist_ok=True)
  lay = Layout(a.keys, a.values)
  cfg = task_config(lay, a.seq_len, a.preset)
  mesh = sharding.make_mesh({"context": a.context}, jax.devices()[:a.context]) \
      if a.attn.startswith("ring") else None
  log(f"kv_retrieval: L={a.seq_len}, {a.pairs} pairs, {cfg.name} (MoE {cfg.moe.num_experts} "
      f"experts top-{cfg.moe.top_k}), attention {a.attn}"
      + (f" over {a.context} devices" if mesh else "") + f"; {a.steps} steps x {a.batch}")
  t0 = time.perf_counter()
  params = common.load_params(a.params, cfg) if a.params else \
      train_curriculum(a, lay, cfg, mesh, out, log)
  train_s = time.perf_counter() - t0
  # Off the mesh: parameters the ring step returns are replicated on all its devices, and a
  # jitted forward of them runs on every one (8 copies of the work on this CPU's 2 cores).
  params = jax.device_put(params, jax.devices()[0])
  lengths = sorted({l for l in (a.seq_len // 4, a.seq_len // 2, a.seq_len)
                    if l - 3 * a.queries >= 2 * a.pairs})      # lengths that hold the pairs
  erng = np.random.default_rng(a.seed + 1)
  acc = {}
  for l in lengths:
    for d in DEPTHS:
      acc[(l, d)] = accuracy_at(params, cfg, lay, l, a.pairs, d, a.eval_n, erng,
                                queries=a.queries)
    log(f"eval L={l}: " + " ".join(f"{d:.0%}:{acc[(l, d)]:.2f}" for d in DEPTHS))
  full = [acc[(a.seq_len, d)] for d in DEPTHS]
  res = {"task": "kv_retrieval", "model": cfg.name, "seq_len": a.seq_len, "pairs": a.pairs,
         "queries": a.queries, "repeats": a.repeats, "steps": a.steps, "batch": a.batch,
         "train_attention": a.attn, "params_from": a.params or "this run",
         "stages_before": [{"kind": k, "seq_len": l, "steps": n, "batch": b}
                           for k, l, n, b in a.stage_list],
         "ring_devices": a.context if mesh else 0, "train_seconds": round(train_s, 1),
         "min_depth_accuracy_full_context": min(full), "mean_accuracy_full_context":
         float(np.mean(full)), "target": 0.98, "eval_n": a.eval_n,
         "accuracy": {f"{l}@{d}": v for (l, d), v in acc.items()}}
  common.write_json(os.path.join(out, "results.json"), res)
  heatmap(acc, lengths, os.path.join(out, "depth_heatmap.png"),
          f"KV retrieval accuracy, trained at L={a.seq_len} ({a.attn})")
  log(json.dumps({k: v for k, v in res.items() if k != "accuracy"}))
  return res


if __name__ == "__main__":
  run()
