"""What one compiled train step costs per device, and the roofline estimate built on it.

`StepFigures` holds the compiler's own numbers for one device of the SPMD program:
memory_analysis() (arguments, outputs, aliased outputs, temporaries), cost_analysis()
(FLOPs, HBM bytes accessed) and the collective traffic parsed from the HLO
(`collectives.py`). `estimate()` turns them into a step time with the chip's published peaks
(`hardware.py`):

    t_flops = max(compiled FLOPs, model FLOPs / chips) / peak bf16 FLOP/s
              (the model figure guards against kernels whose FLOPs the compiler cannot see:
               Pallas custom calls report none)
    t_hbm   = bytes accessed / HBM bandwidth
    t_ici   = collective bytes sent / ICI bandwidth (all links of the chip)
    step    = max(t_flops, t_hbm, t_ici)      the roofline: perfect overlap (a lower bound)
    serial  = max(t_flops, t_hbm) + t_ici      collectives not overlapped (an upper bound)
    MFU     = model FLOPs per step / (step x chips x peak)

Memory per device that must fit in HBM: arguments + outputs - aliased (donated state is
updated in place) + temporaries.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

from gemini.train.aot import collectives as coll_lib
from gemini.train.aot.hardware import Chip

_NUMERIC = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "flops",
            "bytes_accessed", "transcendentals")


@dataclasses.dataclass
class StepFigures:
  """Per-device figures of one compiled train step (bytes, FLOPs)."""
  argument_bytes: float
  output_bytes: float
  alias_bytes: float
  temp_bytes: float
  flops: float
  bytes_accessed: float
  transcendentals: float
  collectives: coll_lib.Collectives
  compiler_oom: bool = False   # the compiler refused the program (more than HBM); see below

  @property
  def total_bytes(self) -> float:
    """HBM bytes live at the peak: arguments + outputs - aliased + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def combine(self, other: "StepFigures", a: float, b: float) -> "StepFigures":
    """a * self + b * other, field by field."""
    vals = {k: a * getattr(self, k) + b * getattr(other, k) for k in _NUMERIC}
    return StepFigures(**vals, collectives=self.collectives.scaled(other.collectives, a, b),
                       compiler_oom=self.compiler_oom or other.compiler_oom)

  def to_json(self) -> dict:
    d = {k: getattr(self, k) for k in _NUMERIC}
    d["collectives"] = dataclasses.asdict(self.collectives)
    d["compiler_oom"] = self.compiler_oom
    return d

  @classmethod
  def from_json(cls, d: dict) -> "StepFigures":
    return cls(**{k: d[k] for k in _NUMERIC},
               collectives=coll_lib.Collectives(**d["collectives"]),
               compiler_oom=d.get("compiler_oom", False))


def _cost(obj) -> dict:
  cost = obj.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per program.
    cost = cost[0]
  return cost or {}


def from_compile(result, num_devices: int) -> StepFigures:
  """Per-device figures of a `compile_step.CompileResult` of a `num_devices` SPMD program.

  Compiled: memory_analysis() and cost_analysis() as they are. Refused for HBM
  (compiler_oom): the total the compiler said it needs; arguments = the exact per-device
  shards of state + batch; outputs = the donated state (aliased); temporaries = the rest;
  FLOPs and bytes = the unpartitioned program's cost_analysis() / devices; collectives from
  the optimised HLO the compiler dumped before giving up.
  """
  coll = coll_lib.parse_collectives(result.hlo_text, num_devices)
  if result.compiled is not None:
    mem = result.compiled.memory_analysis()
    cost = _cost(result.compiled)
    return StepFigures(
        argument_bytes=float(mem.argument_size_in_bytes),
        output_bytes=float(mem.output_size_in_bytes),
        alias_bytes=float(mem.alias_size_in_bytes),
        temp_bytes=float(mem.temp_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        transcendentals=float(cost.get("transcendentals", 0.0)),
        collectives=coll)
  from gemini.train.aot.compile_step import shard_bytes  # pylint: disable=import-outside-toplevel
  args = float(shard_bytes(result.shapes.state) + shard_bytes(result.shapes.batch))
  state = float(shard_bytes(result.shapes.state))
  try:
    cost = _cost(result.lowered)
  except Exception:  # pylint: disable=broad-except  (cost is optional when refused)
    cost = {}
  return StepFigures(
      argument_bytes=args, output_bytes=state, alias_bytes=state,
      temp_bytes=max(0.0, result.oom_total_bytes - args),
      flops=float(cost.get("flops", 0.0)) / num_devices,
      bytes_accessed=float(cost.get("bytes accessed", 0.0)) / num_devices,
      transcendentals=float(cost.get("transcendentals", 0.0)) / num_devices,
      collectives=coll, compiler_oom=True)


def extrapolate_layers(f1: StepFigures, l1: int, f2: StepFigures, l2: int,
                       layers: int) -> StepFigures:
  """Figures at `layers` from compiles at l1 < l2 layers, linear in the layer count:
  f(L) = f(l1) + (f(l2) - f(l1)) * (L - l1) / (l2 - l1). The constant part (embedding,
  logits, optimizer scalars) is kept once; every layer adds the same per-layer cost."""
  if not l1 < l2:
    raise ValueError(f"extrapolate_layers: need l1 < l2, got {l1}, {l2}")
  t = (layers - l1) / (l2 - l1)
  out = f1.combine(f2, 1.0 - t, t)
  # Temporaries are a peak, not a sum: with remat the peak is one layer's recomputation,
  # and compile-to-compile scheduling noise can make the 2-layer peak the smaller one. A
  # deeper program needs at least the peak either compile needed.
  out.temp_bytes = max(out.temp_bytes, f1.temp_bytes, f2.temp_bytes)
  return out


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Roofline step time on `chips` chips of `chip`, and what it implies."""
  t_flops: float
  t_hbm: float
  t_ici: float
  step_time: float          # max of the three (perfect overlap)
  serial_time: float        # max(t_flops, t_hbm) + t_ici (collectives not overlapped)
  bound: str                # "compute" | "memory" | "collectives"
  tokens_per_second: float
  mfu: float                # model FLOPs / (step_time * chips * peak)
  fits: bool
  hbm_fraction: float       # total bytes / HBM


def estimate(fig: StepFigures, chip: Chip, chips: int, tokens_per_step: int,
             model_flops_per_token: float) -> Estimate:
  """The roofline estimate (see the module docstring) of one step."""
  model_flops = model_flops_per_token * tokens_per_step
  t_flops = max(fig.flops, model_flops / chips) / chip.peak_bf16_flops
  t_hbm = fig.bytes_accessed / chip.hbm_bandwidth
  t_ici = fig.collectives.total_ici_bytes / chip.ici_bandwidth
  times: Dict[str, float] = {"compute": t_flops, "memory": t_hbm, "collectives": t_ici}
  bound = max(times, key=times.get)
  step = times[bound]
  return Estimate(t_flops, t_hbm, t_ici, step, max(t_flops, t_hbm) + t_ici, bound,
                  tokens_per_step / step if step > 0 else 0.0,
                  model_flops / (step * chips * chip.peak_bf16_flops) if step > 0 else 0.0,
                  fig.total_bytes <= chip.hbm_bytes, fig.total_bytes / chip.hbm_bytes)
