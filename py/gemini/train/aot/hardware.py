"""Per-chip figures of the TPU generations we compile for, and topology parsing.

Public per-chip figures from the Cloud TPU system-architecture pages
(cloud.google.com/tpu/docs/{v4,v5e,v5p-training,v6e}), as published there:

  gen   peak bf16     HBM        HBM bandwidth   ICI bandwidth per chip (bidirectional)
  v4    275 TFLOP/s   32 GiB     1200 GB/s       ~540 GB/s: not on the v4 page; derived from its
                                                   "all-reduce bandwidth per Pod 1.1 PB/s" over
                                                   4096 chips x 2 (the same ratio v5e's page gives:
                                                   51.2 TB/s / 256 chips x 2 = 400 GB/s)
  v5e   197 TFLOP/s   16 GB      819 GB/s        400 GB/s (1600 Gbit/s)
  v5p   459 TFLOP/s   95 GiB     2765 GB/s       1200 GB/s (4800 Gbit/s)
  v6e   918 TFLOP/s   32 GB      1638 GB/s       800 GB/s

"GB" on those pages is decimal for bandwidth; HBM capacity is taken as printed (GiB for v4
and v5p, GB for v5e and v6e: the smaller reading, so "fits" is never optimistic).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip generation."""
  name: str
  peak_bf16_flops: float     # FLOP/s per chip
  hbm_bytes: int             # HBM capacity per chip
  hbm_bandwidth: float       # bytes/s per chip
  ici_bandwidth: float       # bytes/s per chip, bidirectional (all links)


_GiB = 1 << 30
CHIPS = {
    "v4": Chip("v4", 275e12, 32 * _GiB, 1200e9, 540e9),
    "v5e": Chip("v5e", 197e12, 16 * 10 ** 9, 819e9, 400e9),
    "v5p": Chip("v5p", 459e12, 95 * _GiB, 2765e9, 1200e9),
    "v6e": Chip("v6e", 918e12, 32 * 10 ** 9, 1638e9, 800e9),
}


def parse_topology(topology: str) -> Tuple[Chip, Tuple[int, ...]]:
  """"v5p:4x4x4" -> (CHIPS['v5p'], (4, 4, 4)). Raises ValueError naming the bad part."""
  gen, sep, dims = topology.partition(":")
  if not sep or gen not in CHIPS:
    raise ValueError(f"--topology={topology!r}: expected GEN:AxB[xC] with GEN one of "
                     f"{', '.join(CHIPS)}")
  try:
    shape = tuple(int(d) for d in dims.split("x"))
  except ValueError:
    raise ValueError(f"--topology={topology!r}: dimensions {dims!r} are not AxB[xC] "
                     "integers") from None
  if not shape or any(d < 1 for d in shape):
    raise ValueError(f"--topology={topology!r}: dimensions must be positive")
  return CHIPS[gen], shape


def num_chips(topology: str) -> int:
  return math.prod(parse_topology(topology)[1])
