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
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(png, dpi=90)
  plt.close(fig)
