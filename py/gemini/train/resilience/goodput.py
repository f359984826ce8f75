"""Goodput: productive step time over wall time, and the time each failure cost.

A step's time is productive only if its result survives: when a failure rolls the run back
to step k (the in-memory replica's or the last checkpoint's), the time of every step after
k becomes lost time, charged to that failure together with the recovery time itself.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional


@dataclasses.dataclass
class Failure:
  at_step: int              # Last completed step when the failure struck.
  restored_step: int        # Step the state was recovered to.
  source: str               # "memory" | "disk" | ...
  recovery_s: float         # Time spent restoring.
  recomputed_s: float       # Time of the completed steps that were lost.

  @property
  def lost_s(self) -> float:
    return self.recovery_s + self.recomputed_s


class GoodputMeter:
  """Call `start()`, then `step_done(step, seconds)` per step and `failure(...)` per failure."""

  def __init__(self, clock=time.perf_counter):
    self._clock = clock
    self._t0: Optional[float] = None
    self._steps: Dict[int, float] = {}
    self.failures: List[Failure] = []
    self.overheads: Dict[str, float] = {}

  def start(self) -> None:
    self._t0 = self._clock()

  def step_done(self, step: int, seconds: float) -> None:
    self._steps[step] = seconds

  def overhead(self, kind: str, seconds: float) -> None:
    """Unproductive time that is not a failure (compilation, checkpoint writes, ...)."""
    self.overheads[kind] = self.overheads.get(kind, 0.0) + seconds

  def failure(self, at_step: int, restored_step: int, source: str, recovery_s: float) -> Failure:
    lost_steps = [s for s in self._steps if s > restored_step]
    recomputed = sum(self._steps.pop(s) for s in lost_steps)
    f = Failure(at_step, restored_step, source, recovery_s, recomputed)
    self.failures.append(f)
    return f

  @property
  def productive_s(self) -> float:
    return sum(self._steps.values())

  def wall_s(self) -> float:
    return self._clock() - self._t0 if self._t0 is not None else 0.0

  def report(self) -> Dict[str, object]:
    wall = self.wall_s()
    return {
        "goodput": self.productive_s / wall if wall > 0 else 0.0,
        "productive_s": self.productive_s,
        "wall_s": wall,
        "overheads_s": dict(self.overheads),
        "failures": [dict(dataclasses.asdict(f), lost_s=f.lost_s) for f in self.failures],
    }
