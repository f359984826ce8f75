"""The progress line every distillation / post-training stage prints."""

from __future__ import annotations


def duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def line(what: str, done: int, total: int, rate: float, unit: str, eta_s: float,
         extra: str = "", width: int = 20) -> str:
  """'[#####.....] step 50/200 loss 4.1 | 1,234 tok/s | ETA 1:02'."""
  bar = "#" * int(width * done / max(total, 1))
  bar += "." * (width - len(bar))
  extra = f" {extra}" if extra else ""
  return f"[{bar}] {what} {done}/{total}{extra} | {rate:,.1f} {unit} | ETA {duration(eta_s)}"
