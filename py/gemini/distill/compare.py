"""`//py/gemini/distill:compare`: every distillation variant at equal student steps and tokens.

    bazel run //py/gemini/distill:compare -- --targets=/tmp/kd --workdir=/tmp/kd-compare

Variants: none (hard labels), top1/top8/top64/top256 (stored top-k, renormalised), sampled
(Random-Sampling KD), full (online full-logit KD, the teacher in the step). Each is a
`train.run` into `workdir/<variant>` (a finished one is read back, so the whole comparison
resumes); then one pass over the held-out windows runs the teacher once per batch and every
student, measuring held-out CE against the real next tokens, KL(teacher || student) over the
full vocabulary, top-1 ECE, and the storage per token each variant needs.
Writes `workdir/compare.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gemini.distill import calibration, data as data_lib, progress
from gemini.distill import teacher as teacher_lib
from gemini.distill import train as train_lib
from gemini.model import transformer

VARIANTS = ("none", "top1", "top8", "top64", "top256", "sampled", "full")


def variant_args(base, name: str):
  a = argparse.Namespace(**vars(base))
  a.workdir = os.path.join(base.workdir, name)
  if name.startswith("top"):
    a.mode, a.k = "topk", int(name[3:])
  else:
    a.mode, a.k = name, 64
  return a


def storage_per_token(name: str, manifest: dict) -> float:
  """Bytes per training token of the teacher signal (FORMAT.md: u16 count + k (u16, f16))."""
  if name == "none":
    return 0.0
  if name.startswith("top"):
    return 2.0 + 4.0 * int(name[3:])
  if name == "sampled":
    return manifest["bytes_per_token"][f"sampled{manifest['draws']}"]
  return float(manifest["bytes_per_token"]["full_logits_f16"])


def evaluate(states: dict, cfg, teacher, root: str, batch: int = 8, log=print) -> dict:
  """Held-out metrics per student (and the teacher) over every held-out window."""
  data = data_lib.WindowData(root, "heldout", min(batch, 1), "none")
  n = len(data)
  t_fwd = teacher_lib.logits_fn(teacher.cfg)

  @jax.jit
  def stats(params, tokens, targets, t_logits):
    logits = transformer.forward(params, {"tokens": tokens}, cfg)[0]
    return _token_stats(logits, targets, t_logits)

  @jax.jit
  def teacher_stats(t_logits, targets):
    return _token_stats(t_logits, targets, t_logits)

  acc = {k: {"nll": [], "kl": [], "conf": [], "hit": []} for k in list(states) + ["teacher"]}
  t0 = time.perf_counter()
  for i in range(0, n, batch):
    rows = np.arange(i, min(i + batch, n))
    b = data.rows(rows)
    tokens, targets = jnp.asarray(b["tokens"]), jnp.asarray(b["targets"])
    t_logits = t_fwd(teacher.params, tokens)
    outs = {name: stats(s["params"], tokens, targets, t_logits) for name, s in states.items()}
    outs["teacher"] = teacher_stats(t_logits, targets)
    for name, o in outs.items():
      for key, v in zip(("nll", "kl", "conf", "hit"), o):
        acc[name][key].append(np.asarray(v).ravel())
    done = rows[-1] + 1
    el = time.perf_counter() - t0
    log(progress.line("held-out window", done, n, done * tokens.shape[1] / el, "tok/s",
                      el / done * (n - done)))
  out = {}
  for name, a in acc.items():
    cat = {k: np.concatenate(v) for k, v in a.items()}
    out[name] = {"heldout_ce": float(cat["nll"].mean()), "kl_to_teacher": float(cat["kl"].mean()),
                 "ece": calibration.ece(cat["conf"], cat["hit"]),
                 "top1_accuracy": float(cat["hit"].mean()), "tokens": int(cat["nll"].size)}
  return out


def _token_stats(logits, targets, t_logits):
  logs = jax.nn.log_softmax(logits, -1)
  logp = jax.nn.log_softmax(t_logits, -1)
  nll = -jnp.take_along_axis(logs, targets[..., None], -1)[..., 0]
  kl = jnp.sum(jnp.exp(logp) * (logp - logs), -1)
  conf = jnp.exp(jnp.max(logs, -1))
  hit = jnp.argmax(logs, -1) == targets
  return nll, kl, conf, hit


def write_report(result: dict, workdir: str) -> str:
  rows = result["variants"]
  base = rows["none"]["heldout_ce"]
  full = rows.get("full", {}).get("heldout_ce")
  lines = ["| variant | held-out CE (nats/token) | vs none | vs full | KL to teacher | ECE | "
           "top-1 acc | teacher bytes/token |", "|---|---|---|---|---|---|---|---|"]
  for name in list(rows) + ["teacher"]:
    r = rows[name] if name in rows else result["teacher"]
    gap = r["heldout_ce"] - base
    vs_full = (f"{100 * (r['heldout_ce'] - full) / full:+.2f} %" if full else "")
    store = r.get("bytes_per_token")
    store_s = "" if store is None else (f"{store:,.0f}" + (" (online)" if name == "full" else ""))
    lines.append(f"| {name} | {r['heldout_ce']:.4f} | {gap:+.4f} ({100 * gap / base:+.1f} %) | "
                 f"{vs_full} | {r['kl_to_teacher']:.4f} | {r['ece']:.4f} | "
                 f"{r['top1_accuracy']:.3f} | {store_s} |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(workdir, "compare.md"), "w") as f:
    f.write(text)
  return text


def plot(result: dict, workdir: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from gemini.train.metrics import read_metrics  # pylint: disable=import-outside-toplevel
  names = list(result["variants"])
  fig, axes = plt.subplots(1, 4, figsize=(17, 4))
  for key, ax, label in (("heldout_ce", axes[0], "held-out CE (nats/token)"),
                         ("kl_to_teacher", axes[1], "KL(teacher || student)"),
                         ("ece", axes[2], "ECE (top-1)")):
    vals = [result["variants"][n][key] for n in names]
    ax.bar(names, vals, color=["gray"] + ["C0"] * (len(names) - 1))
    lo = min(vals)
    ax.set_ylim(lo * 0.95 if key != "ece" else 0, max(vals) * 1.02)
    ax.set_title(label)
    ax.tick_params(axis="x", rotation=45)
  for n in names:
    recs = read_metrics(os.path.join(workdir, n, "metrics.jsonl"))
    curve = sorted({r["step"]: r["hard_ce"] for r in recs if "hard_ce" in r}.items())
    if curve:
      s, l = zip(*curve)
      axes[3].plot(s, l, label=n)
  axes[3].set_title("train hard-label CE")
  axes[3].set_xlabel("step")
  axes[3].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "compare.png"), dpi=100)
  plt.close(fig)


def parse_args(argv):
  p = train_lib.parse_args(["--targets=x", "--workdir=x"])
  q = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  q.add_argument("--targets", required=True)
  q.add_argument("--workdir", required=True)
  q.add_argument("--variants", default=",".join(VARIANTS))
  for k, v in vars(p).items():
    if k not in ("targets", "workdir", "mode", "k"):
      q.add_argument(f"--{k}", type=type(v), default=v)
  return q.parse_args(argv)


def run(args, teacher=None, log=print) -> dict:
  teacher = teacher or teacher_lib.load_teacher(args.gguf or None)
  with open(os.path.join(args.targets, "manifest.json")) as f:
    manifest = json.load(f)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS and not v.startswith("top")]
  if unknown or "none" not in names:
    raise ValueError(f"--variants={args.variants}: need 'none' and names from {VARIANTS}")
  states, times = {}, {}
  for name in names:
    log(f"== variant {name}")
    t0 = time.perf_counter()
    states[name] = train_lib.run(variant_args(args, name), teacher=teacher, log=log)
    times[name] = time.perf_counter() - t0
  seq = manifest["seq_len"]
  cfg = train_lib.student_config(manifest["vocab_size"], args.d_model, args.n_layers,
                                 args.n_heads, args.head_dim, args.d_ff, max(seq, 16))
  ev = evaluate(states, cfg, teacher, args.targets, log=log)
  result = {"variants": {}, "teacher": ev.pop("teacher"), "steps": args.steps,
            "batch_size": args.batch_size, "seq_len": seq,
            "train_tokens_per_run": args.steps * args.batch_size * seq,
            "unique_train_tokens": manifest["train"]["tokens"],
            "student": {k: getattr(args, k) for k in ("d_model", "n_layers", "n_heads",
                                                      "head_dim", "d_ff")},
            "student_params": int(sum(x.size for x in jax.tree.leaves(states["none"]["params"]))),
            "topk_mass": manifest["train"]["topk_mass"]}
  for name in names:
    result["variants"][name] = dict(ev[name], bytes_per_token=storage_per_token(name, manifest),
                                    wall_s=times[name])
  with open(os.path.join(args.workdir, "compare.json"), "w") as f:
    json.dump(result, f, indent=1)
  log(write_report(result, args.workdir))
  plot(result, args.workdir)
  return result


def main(argv=None):
  run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
