"""`bazel run //py/gemini/train:aot -- --config=pro --topology=v5p:8x8x8 [--mesh fsdp=64,tensor=8]
[--batch B --seq S] [--plan]`: the real train step compiled for a TPU slice, costed per chip.

Without --plan: compile one mesh (default: all chips on fsdp) and print memory, FLOPs,
collectives, the roofline step time and MFU. With --plan: the mesh planner's table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional

from gemini import config_flags
from gemini.config import get_config
from gemini.train.aot import analyze as an
from gemini.train.aot import compile_step, hardware, planner


def _gib(x: float) -> str:
  """Bytes with a binary unit that keeps 3 significant digits."""
  for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if abs(x) >= scale:
      return f"{x / scale:,.2f} {unit}"
  return f"{x:.0f} B"


def with_dispatch(cfg, dispatch: str):
  """`cfg` with moe.dispatch replaced ("" keeps the preset's)."""
  if not dispatch or not cfg.moe.enabled:
    return cfg
  return cfg.replace(moe=dataclasses.replace(cfg.moe, dispatch=dispatch))


def format_analysis(a: an.Analysis) -> str:
  """The per-chip report of one compiled step (multi-line text)."""
  f, e, chip = a.figures, a.estimate(), a.chip
  c = f.collectives
  lines = [
      f"{a.config} on {a.topology} ({a.chips} chips, {chip.name}), mesh "
      f"{compile_step.format_mesh(a.mesh)}, batch {a.batch} x seq {a.seq} = "
      f"{a.tokens_per_step:,} tokens/step, attention={a.attn_impl}, moe={a.moe_impl}"
      + (", remat" if a.remat else ""),
      f"  {a.note}"
      + ("" if not a.cached else "  [from cache]")
      + ("" if a.cached else f"  (compile {a.compile_seconds:.0f} s)"),
      f"  model: params {_gib(a.param_bytes)} f32, train state {_gib(a.state_bytes)} "
      f"(= {_gib(a.state_bytes / a.chips)}/chip if perfectly sharded)",
      "  memory per chip (memory_analysis):",
      f"    arguments    {_gib(f.argument_bytes)}",
      f"    outputs      {_gib(f.output_bytes)}  (aliased to donated arguments: "
      f"{_gib(f.alias_bytes)})",
      f"    temporaries  {_gib(f.temp_bytes)}",
      f"    total        {_gib(f.total_bytes)}  of {_gib(chip.hbm_bytes)} HBM "
      f"({e.hbm_fraction:.0%})  -> {'FITS' if e.fits else 'DOES NOT FIT'}",
      "  cost per chip (cost_analysis):",
      (f"    FLOPs        {f.flops:.3e} compiled; " if f.flops else
       "    FLOPs        n/a (no compiled program); ")
      + f"model {a.model_flops_per_token * a.tokens_per_step / a.chips:.3e}"
      f" (family.train_flops_per_token x tokens / chips)",
      f"    HBM bytes    {f.bytes_accessed:.3e} accessed" if f.bytes_accessed else
      "    HBM bytes    n/a (no compiled program)",
      "  collectives per chip (from the compiled HLO):",
  ]
  for k in c.count:
    if c.count[k]:
      lines.append(f"    {k:<19}{c.count[k]:>5} ops  {c.result_bytes[k] / 2**20:>12,.1f} MiB results"
                   f"  {c.ici_bytes[k] / 2**20:>12,.1f} MiB sent")
  lines += [
      f"    total ICI    {c.total_ici_bytes / 2**20:,.1f} MiB sent",
      f"  roofline ({chip.name}: {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, "
      f"{chip.hbm_bandwidth / 1e9:.0f} GB/s HBM, {chip.ici_bandwidth / 1e9:.0f} GB/s ICI):",
      f"    compute {e.t_flops * 1e3:.2f} ms | HBM {e.t_hbm * 1e3:.2f} ms | ICI "
      f"{e.t_ici * 1e3:.2f} ms  -> step {e.step_time * 1e3:.2f} ms ({e.bound}-bound; "
      f"{e.serial_time * 1e3:.2f} ms if collectives do not overlap)",
      f"    {e.tokens_per_second:,.0f} tokens/s, predicted MFU {e.mfu:.1%}"
      + ("" if f.flops else " (upper bound: model FLOPs and ICI only, the program was refused)"),
  ]
  return "\n".join(lines)


def format_plan(p: planner.Plan) -> str:
  head = ("rank", "mesh", "state/chip", "compiled/chip", "step ms", "bound", "tokens/s", "MFU",
          "status")
  rows = []
  for i, c in enumerate(p.candidates):
    if c.analysis is None and len(rows) > 30:
      continue
    if c.analysis:
      e = c.analysis.estimate()
      rows.append((str(i + 1), compile_step.format_mesh(c.mesh), _gib(c.state_bytes),
                   _gib(c.analysis.figures.total_bytes), f"{e.step_time * 1e3:,.1f}", e.bound,
                   f"{e.tokens_per_second:,.0f}", f"{e.mfu:.1%}", c.status))
    else:
      rows.append((str(i + 1), compile_step.format_mesh(c.mesh), _gib(c.state_bytes), "-", "-",
                   "-", "-", "-", c.status))
  w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  fmt = lambda r: "  ".join(x.ljust(w[i]) for i, x in enumerate(r))
  naive = p.naive
  out = [f"plan: {p.config} on {p.topology}, batch {p.batch} x seq {p.seq}, "
         f"HBM {_gib(p.hbm_bytes)}/chip; {len(p.candidates)} valid meshes", fmt(head)]
  out += [fmt(r) for r in rows]
  skipped = len(p.candidates) - len(rows)
  if skipped:
    out.append(f"... and {skipped} more meshes not compiled")
  out.append(p.verdict())
  pick = p.best or p.closest
  if naive is not None and naive is not pick:
    why = ("it does not fit" if naive.analysis is None or not naive.analysis.estimate().fits
           else "it is slower")
    out.append(f"naive all-data mesh ({compile_step.format_mesh(naive.mesh)}): {naive.status}; "
               f"the plan differs because {why}")
  return "\n".join(out)


def _log(text: str) -> None:
  print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True, help="preset name (gemini.config.PRESETS)")
  p.add_argument("--topology", required=True, help="e.g. v5e:2x2, v5p:8x8x8, v6e:4x4, v4:4x4x4")
  p.add_argument("--mesh", default="", help="e.g. fsdp=64,tensor=8 (default: fsdp=all chips)")
  p.add_argument("--batch", type=int, default=0, help="global batch (default: one row per chip)")
  p.add_argument("--seq", type=int, default=0, help="sequence length (default min(4096, max))")
  p.add_argument("--plan", action="store_true", help="run the mesh planner")
  p.add_argument("--attn_impl", default="xla", choices=("xla", "flash", "ring"))
  p.add_argument("--moe_impl", default="xla", choices=("xla", "pallas"))
  p.add_argument("--moe_dispatch", default="", choices=("", "dropless", "capacity"),
                 help="override the preset's moe.dispatch")
  p.add_argument("--remat", action="store_true", help="recompute each layer in the backward")
  p.add_argument("--max_compiles", type=int, default=4, help="planner: meshes to compile")
  p.add_argument("--cache_dir", default=None, help="default ~/.cache/gemini_aot; '' disables")
  return p


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    cfg = with_dispatch(get_config(args.config), args.moe_dispatch)
    chips = hardware.num_chips(args.topology)
    seq = args.seq or min(4096, cfg.max_seq_len)
    batch = args.batch or chips
    if args.plan:
      p = planner.plan(cfg, args.topology, batch, seq, attn_impl=args.attn_impl,
                       moe_impl=args.moe_impl, remat=args.remat,
                       max_compiles=args.max_compiles, cache_dir=args.cache_dir, log=_log)
      print(format_plan(p))
      for c in p.candidates:
        if c is (p.best or p.closest) and c.analysis:
          print(format_analysis(c.analysis))
      return 0
    mesh = config_flags.parse_mesh(args.mesh) if args.mesh else {"fsdp": chips}
    a = an.analyze(cfg, args.topology, mesh, batch, seq, attn_impl=args.attn_impl,
                   moe_impl=args.moe_impl, remat=args.remat, cache_dir=args.cache_dir,
                   log=_log)
    print(format_analysis(a))
    return 0
  except ValueError as e:
    print(f"aot: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
