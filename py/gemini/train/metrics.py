"""Metrics a person can follow: JSONL records, a progress line, and a loss-curve PNG.

`DIR/metrics.jsonl` gets one JSON object per logged step ({"step", "loss", "tokens_per_s",
"mfu", ...}) and one per event ({"event": "failure" | "sdc" | "mixture" | ...}). After a
resume, steps are logged again from the checkpoint on; readers keep the last record per step.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional


class MetricsLog:
  """Appends JSON records to `path` (only in process 0 when `enabled`)."""

  def __init__(self, path: str, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    if enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, record: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """All records of a metrics.jsonl file (a torn last line from a kill is skipped)."""
  out = []
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def loss_curve(records: List[Dict[str, Any]]) -> List[tuple]:
  """[(step, loss)] sorted by step, the last record of each step winning (resumes re-log)."""
  by_step = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
  return sorted(by_step.items())


def plot_loss(metrics_path: str, png_path: str, reference: Optional[float] = None,
              reference_label: str = "unigram entropy") -> None:
  """Writes the loss curve of `metrics_path` to `png_path` (matplotlib, Agg backend)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  records = read_metrics(metrics_path)
  curve = loss_curve(records)
  fig, ax = plt.subplots(figsize=(7, 4))
  if curve:
    steps, losses = zip(*curve)
    ax.plot(steps, losses, label="train loss")
  for r in records:
    if r.get("event") in ("failure", "elastic", "sdc"):
      ax.axvline(r.get("step", 0), color="red", alpha=0.3)
    if r.get("event") == "mixture":
      ax.axvline(r.get("step", 0), color="green", alpha=0.3, linestyle="--")
  if reference is not None:
    ax.axhline(reference, color="gray", linestyle=":", label=reference_label)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  tmp = png_path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, png_path)


def _duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def progress_line(step: int, total: int, loss: float, tokens_per_s: float, mfu: float,
                  eta_s: float, width: int = 20) -> str:
  """'[#####.....] step 50/200 loss 4.123 | 1,234 tok/s | MFU 12.3% | ETA 1:02'."""
  done = int(width * step / max(total, 1))
  bar = "#" * done + "." * (width - done)
  return (f"[{bar}] step {step}/{total} loss {loss:.4f} | {tokens_per_s:,.0f} tok/s | "
          f"MFU {100 * mfu:.1f}% | ETA {_duration(eta_s)}")
