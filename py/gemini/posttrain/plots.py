"""Curves of chosen metrics against step from a metrics JSONL (one panel per key)."""

from __future__ import annotations

from typing import Sequence

import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=wrong-import-position

from gemini.train.metrics import read_metrics


def plot_curves(jsonl: str, png: str, keys: Sequence[str], title: str = "") -> None:
  """One panel per key in `keys` (records without it skipped); the last record of a step
  wins, so a resumed run's repeated steps draw once."""
  by_step = {}
  for r in read_metrics(jsonl):
    if "step" in r:
      by_step.setdefault(int(r["step"]), {}).update(r)
  steps = sorted(by_step)
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
  for ax, k in zip(axes[0], keys):
    xs = [s for s in steps if k in by_step[s]]
    ax.plot(xs, [by_step[s][k] for s in xs], marker="." if len(xs) < 60 else None)
    ax.set_xlabel("step")
    ax.set_title(k)
    ax.grid(alpha=0.3)
  _save(fig, png, title)


def plot_agent(result: dict, png: str, title: str = "") -> None:
  """Two panels from an agent evaluation (agent_eval.evaluate; `result["eval"]` or itself):
  held-out accuracy per tool kind with and without tools, and accuracy against the thinking
  budget per thinking kind."""
  ev = result.get("eval", result)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  if "with_tools" in ev:
    kinds = [k for k in ev["with_tools"] if k != "calls"]
    xs = range(len(kinds))
    axes[0].bar([x - 0.2 for x in xs], [ev["without_tools"].get(k, 0) for k in kinds], 0.4,
                label="without tools")
    axes[0].bar([x + 0.2 for x in xs], [ev["with_tools"][k] for k in kinds], 0.4,
                label="with tools")
    axes[0].set_xticks(list(xs), kinds)
    axes[0].set_ylim(0, 1)
    axes[0].legend()
    axes[0].set_title("tool tasks (held-out)")
  if "thinking" in ev:
    budgets = sorted(ev["thinking"], key=int)
    keys = [k for k in ev["thinking"][budgets[0]] if k not in ("thought_tokens", "forced")]
    for k in keys:
      axes[1].plot([int(b) for b in budgets], [ev["thinking"][b][k] for b in budgets],
                   marker="o", label=k)
    axes[1].set_xscale("symlog", linthresh=16)
    axes[1].set_xticks([int(b) for b in budgets], budgets)
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("thinking budget (tokens)")
    axes[1].legend()
    axes[1].set_title("accuracy vs thinking budget (held-out)")
  for ax in axes:
    ax.grid(alpha=0.3)
  _save(fig, png, title)


def _save(fig, png: str, title: str) -> None:
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(png, dpi=90)
  plt.close(fig)
