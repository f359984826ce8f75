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

from gemini.train.aot import collectives as coll_lib, compile_step
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
  args = float(compile_step.shard_bytes(result.shapes.state) + compile_step.shard_bytes(result.shapes.batch))
  state = float(compile_step.shard_bytes(result.shapes.state))
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


def count_every_iteration(rolled: StepFigures, unrolled2: StepFigures,
                          trips: int) -> StepFigures:
  """Figures of a step whose layer scan runs `trips` iterations, from two compiles of the
  whole model: `rolled` (one block of layers per iteration, the program that runs) and
  `unrolled2` (two blocks per iteration).

  XLA's cost analysis counts a while loop's body once, and the TPU compiler's HLO text does
  not state trip counts for the collectives parser to multiply by. With one block per
  iteration a count is outside + body; with two, outside + (2 + trips % 2) body (lax.scan
  runs the odd remainder block outside the loop). So body = difference / (1 + trips % 2), and
  the step with every iteration counted is rolled + (trips - 1) body. (Where a count already
  multiplies by the trip count, both compiles agree and nothing is added.) Memory is a
  property of the program that runs: the rolled program's, as compiled. Loops nested inside
  the body (a ring-attention ring) stay counted once per outer iteration in FLOPs, which
  report.py marks as an upper-bound MFU.
  """
  if trips < 1:
    raise ValueError(f"count_every_iteration: trips={trips}, need >= 1")
  if trips == 1:
    return rolled
  b = (trips - 1) / (1 + trips % 2)
  out = dataclasses.replace(
      rolled, collectives=rolled.collectives.plus_scaled_difference(unrolled2.collectives, b))
  for k in ("flops", "bytes_accessed", "transcendentals"):
    # A program the compiler refused has no compiled cost analysis; the unpartitioned
    # program's is no basis for a difference with a compiled one: not counted (0 = n/a).
    counted = not (rolled.compiler_oom or unrolled2.compiler_oom)
    setattr(out, k, getattr(rolled, k) + b * (getattr(unrolled2, k) - getattr(rolled, k))
            if counted else 0.0)
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
