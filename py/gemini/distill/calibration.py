"""Expected calibration error of next-token predictions (top-1 confidence vs accuracy).

ECE = sum_b (n_b / N) |acc_b - conf_b| over `bins` equal-width confidence bins, where conf is
the predicted probability of the argmax token and acc whether it is the real next token.
"""

from __future__ import annotations

import numpy as np


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
  """confidence f [N] in [0, 1], correct bool [N] -> ECE (0 = perfectly calibrated)."""
  conf = np.asarray(confidence, np.float64).ravel()
  hit = np.asarray(correct, np.float64).ravel()
  if conf.size == 0:
    raise ValueError("ece: no predictions")
  idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
  total = 0.0
  for b in range(bins):
    m = idx == b
    if m.any():
      total += m.sum() / conf.size * abs(hit[m].mean() - conf[m].mean())
  return float(total)
