"""The train step's memory estimate against the device's memory, before the first step.

XLA's `compiled.memory_analysis()` gives the step's argument, output, alias and temporary
bytes per device. Needed = arguments + outputs - aliased + temporaries. Available = the
device's `bytes_limit` (TPU/GPU `memory_stats()`), or on CPU, where every device shares the
host's RAM, MemAvailable from /proc/meminfo divided by the local CPU devices. A step that
needs more is refused with both figures and what would fit: the temporaries grow with the
batch (linearly) and with seq_len (at most quadratically, XLA attention's [S, S] scores), so
the largest batch_size and, at batch 1, seq_len whose estimate fits are quoted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax


class StepMemoryError(MemoryError):
  """The compiled step needs more memory than the device has (raised before running it)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  needed: int          # bytes per device
  fixed: int           # arguments + outputs - aliased (state and batch)
  temp: int            # temporaries
  available: Optional[int]


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def available_bytes(device) -> Optional[int]:
  """Memory one device may use (None when unknown)."""
  if device.platform != "cpu":
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
      return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    avail = int(info["MemAvailable"].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None
  return avail // max(1, len(jax.local_devices(backend="cpu")))


def estimate(compiled, device) -> Estimate:
  m = compiled.memory_analysis()
  if m is None:
    return Estimate(0, 0, 0, available_bytes(device))
  fixed = int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
  temp = int(m.temp_size_in_bytes)
  return Estimate(fixed + temp, fixed, temp, available_bytes(device))


def check(compiled, mesh, tc) -> Estimate:
  """The estimate; StepMemoryError with what would fit when it exceeds the available memory."""
  est = estimate(compiled, mesh.devices.flat[0])
  if est.available is None or est.needed <= est.available:
    return est
  room = est.available - est.fixed
  fit = []
  if room > 0 and est.temp > 0:
    per_row = est.temp / tc.batch_size
    best_b = int(room // per_row)
    if best_b >= 1:
      fit.append(f"--batch_size={best_b} at --seq_len={tc.seq_len}")
    seq = tc.seq_len * math.sqrt(room / per_row)   # Conservative: temporaries ~ S^2.
    seq = int(seq) // 128 * 128 or int(seq)
    if seq >= 1:
      fit.append(f"--seq_len={seq} at --batch_size=1")
  hint = (f"; estimated to fit: {' or '.join(fit)}" if fit else
          "; the state alone does not fit: shard it over more devices (--mesh fsdp=N)")
  raise StepMemoryError(
      f"the train step at batch {tc.batch_size} x seq_len {tc.seq_len} needs "
      f"{_gib(est.needed)} per device ({_gib(est.fixed)} state and batch + {_gib(est.temp)} "
      f"temporaries, from XLA's memory analysis) but {mesh.devices.flat[0].platform} device "
      f"has {_gib(est.available)} available{hint}. Nothing was run.")
