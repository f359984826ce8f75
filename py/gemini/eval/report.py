"""Results files: a Markdown table from summary JSONL lines, and bar plots."""

from __future__ import annotations

import json
from typing import Dict, List, Sequence


def read_jsonl(path: str) -> List[Dict]:
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown_table(rows: Sequence[Dict], keys: Sequence[str] = ()) -> str:
  keys = list(keys) or list(dict.fromkeys(k for r in rows for k in r
                                          if not isinstance(r[k], (dict, list))))
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |")
  return "\n".join(lines) + "\n"


def write_table(jsonl_path: str, md_path: str) -> str:
  """One table per task (their columns differ), newest line per (model, task)."""
  rows = read_jsonl(jsonl_path)
  latest = {}
  for r in rows:
    latest[(r.get("model"), r.get("task"))] = r
  text = []
  for task in dict.fromkeys(t for _, t in latest):
    text.append(f"### {task}\n\n" + markdown_table([r for (m, t), r in latest.items()
                                                     if t == task]))
  out = "\n".join(text)
  with open(md_path, "w") as f:
    f.write(out)
  return out


def bar_plot(labels: Sequence[str], values: Sequence[float], targets: Sequence[float],
             png_path: str, title: str, ylabel: str = "accuracy"):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.5))
  ax.bar(labels, values, color="tab:blue")
  for i, t in enumerate(targets):
    if t:
      ax.hlines(t, i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
  for i, v in enumerate(values):
    ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.set_ylim(0, 1.05)
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  plt.close(fig)
