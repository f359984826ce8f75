"""Collective traffic of a compiled (SPMD-partitioned) program, read from its HLO text.

Every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute is counted
once per logical op: the TPU compiler splits one async collective into start / compute /
done fusions that repeat the op with the same `channel_id`, so ops are keyed by channel.
Bytes are those one device sends over ICI with the usual ring / pairwise algorithms, for a
group of n devices and a per-device result of R bytes:
    all-gather        R (n-1)/n          (R = the gathered result)
    reduce-scatter    R (n-1)            (input is n R)
    all-reduce        2 R (n-1)/n        (reduce-scatter then all-gather)
    all-to-all        R (n-1)/n
    collective-permute  R
Ops inside while loops are counted once per static occurrence (our train step unrolls its
layers, so the only loops are small ones inside kernels).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Dict

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "s4": 0.5, "u4": 0.5}
_OP = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+ = (?P<shape>.+?) (?P<kind>" + "|".join(KINDS)
                 + r")(?P<suffix>-start|-done)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_CHANNEL = re.compile(r"channel_id=(\d+)")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")


def _array_bytes(shape_text: str) -> float:
  """Bytes of each array in an HLO shape (tuples give a list). Layouts are ignored."""
  sizes = []
  for dtype, dims in _ARRAY.findall(shape_text):
    width = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
    if width is None:
      continue
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    sizes.append(n * width)
  return sizes


def _group_size(rest: str, num_devices: int) -> int:
  m = _MESH_GROUPS.search(rest)
  if m:
    sizes = dict((k.strip().strip("'"), int(v)) for k, v in
                 (kv.split("=") for kv in m.group(1).split(",") if "=" in kv))
    axes = [a.strip().strip("'") for a in m.group(2).split(",") if a.strip()]
    return math.prod(sizes[a] for a in axes) if axes else num_devices
  m = _IOTA_GROUPS.search(rest)
  if m:
    return int(m.group(2))
  m = _LIST_GROUPS.search(rest)
  if m:
    return max(1, len([x for x in m.group(1).split(",") if x]))
  return num_devices


def _traffic(kind: str, result: float, n: int) -> float:
  if n <= 1:
    return 0.0 if kind != "collective-permute" else result
  return {"all-gather": result * (n - 1) / n,
          "reduce-scatter": result * (n - 1),
          "all-reduce": 2 * result * (n - 1) / n,
          "all-to-all": result * (n - 1) / n,
          "collective-permute": result}[kind]


@dataclasses.dataclass
class Collectives:
  """Per-device collective figures: counts, result bytes and ICI bytes sent, by kind."""
  count: Dict[str, int]
  result_bytes: Dict[str, float]
  ici_bytes: Dict[str, float]

  @property
  def total_ici_bytes(self) -> float:
    return sum(self.ici_bytes.values())

  def scaled(self, other: "Collectives", a: float, b: float) -> "Collectives":
    """a * self + b * other, field by field (used to extrapolate over layers)."""
    comb = lambda x, y: {k: a * x[k] + b * y[k] for k in KINDS}
    return Collectives({k: int(round(a * self.count[k] + b * other.count[k])) for k in KINDS},
                       comb(self.result_bytes, other.result_bytes),
                       comb(self.ici_bytes, other.ici_bytes))


def parse_collectives(hlo_text: str, num_devices: int) -> Collectives:
  """Collectives of a compiled HLO module text (`compiled.as_text()`)."""
  seen = {}
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m or m.group("suffix") == "-done":
      continue
    kind, rest = m.group("kind"), m.group("rest")
    sizes = _array_bytes(m.group("shape"))
    if not sizes:
      continue
    # "-start" results are (operand, output, context...) tuples: the output is the largest.
    result = max(sizes) if m.group("suffix") == "-start" or len(sizes) == 1 else sum(sizes)
    ch = _CHANNEL.search(rest)
    key = (kind, ch.group(1)) if ch else (kind, f"line{len(seen)}")
    n = _group_size(rest, num_devices)
    prev = seen.get(key)
    if prev is None or result > prev[0]:
      seen[key] = (result, n)
  count = {k: 0 for k in KINDS}
  result_bytes = {k: 0.0 for k in KINDS}
  ici = {k: 0.0 for k in KINDS}
  for (kind, _), (result, n) in seen.items():
    count[kind] += 1
    result_bytes[kind] += result
    ici[kind] += _traffic(kind, result, n)
  return Collectives(count, result_bytes, ici)
