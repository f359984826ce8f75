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
Ops inside while loops count once per iteration when the compiler recorded the loop's
trip count (`known_trip_count`, e.g. the ring-attention ring), else once.
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
_COMP_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s")
_CALL = re.compile(r"\b(calls|body|condition|to_apply)=%([\w.\-]+)")
_CALL_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _multipliers(lines):
  """{computation: times it runs per program execution} from the call graph, and for each
  line index the computation it belongs to. While bodies run known_trip_count times."""
  owner, entry, comp = [], None, None
  callers = {}                                   # callee -> [(caller, factor)]
  for line in lines:
    if line and not line[0].isspace() and line[0] != "}":
      m = _COMP_HEADER.match(line)
      if m:
        comp = m.group(1)
        if line.startswith("ENTRY"):
          entry = comp
    owner.append(comp)
    if comp is None or "=" not in line:
      continue
    trip = _TRIP.search(line)
    for kind, callee in _CALL.findall(line):
      factor = int(trip.group(1)) if (kind == "body" and trip) else 1
      callers.setdefault(callee, []).append((comp, factor))
    for group in _CALL_LIST.findall(line):
      for callee in re.findall(r"%([\w.\-]+)", group):
        callers.setdefault(callee, []).append((comp, 1))
  memo = {}

  def mult(c, depth=0):
    if c == entry or depth > 200:
      return 1
    if c not in memo:
      memo[c] = sum(mult(p, depth + 1) * f for p, f in callers.get(c, ())) or 1
    return memo[c]
  return mult, owner


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

  def plus_scaled_difference(self, other: "Collectives", b: float) -> "Collectives":
    """self + b (other - self), field by field."""
    comb = lambda x, y: {k: x[k] + b * (y[k] - x[k]) for k in KINDS}
    return Collectives({k: int(round(self.count[k] + b * (other.count[k] - self.count[k])))
                        for k in KINDS},
                       comb(self.result_bytes, other.result_bytes),
                       comb(self.ici_bytes, other.ici_bytes))


def parse_collectives(hlo_text: str, num_devices: int) -> Collectives:
  """Collectives of a compiled HLO module text (`compiled.as_text()`)."""
  seen = {}
  lines = hlo_text.splitlines()
  mult, owner = _multipliers(lines)
  for i, line in enumerate(lines):
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
    times = mult(owner[i]) if owner[i] else 1
    prev = seen.get(key)
    if prev is None or result > prev[0]:
      seen[key] = (result, n, max(times, prev[2] if prev else 1))
    else:
      seen[key] = (prev[0], prev[1], max(times, prev[2]))
  count = {k: 0 for k in KINDS}
  result_bytes = {k: 0.0 for k in KINDS}
  ici = {k: 0.0 for k in KINDS}
  for (kind, _), (result, n, times) in seen.items():
    count[kind] += times
    result_bytes[kind] += result * times
    ici[kind] += _traffic(kind, result, n) * times
  return Collectives(count, result_bytes, ici)
