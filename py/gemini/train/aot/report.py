"""The family scale report: each member's best mesh on a sensible slice, as Markdown + PNG.

Every row is a planner run (planner.py) or, for a fixed configuration such as Pro at 1M
tokens with ring attention, one compiled mesh (analyze.py). Figures are the compiler's.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from gemini import family
from gemini.config import get_config
from gemini.train.aot import analyze as an
from gemini.train.aot import compile_step, main as main_lib, planner


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the report: a member, a slice, a global batch and a sequence length."""
  config: str
  topology: str
  batch: int
  seq: int
  attn_impl: str = "xla"
  mesh: Optional[Tuple[Tuple[str, int], ...]] = None   # fixed mesh; None = run the planner
  why: str = ""
  moe_impl: str = "xla"          # "pallas": grouped-matmul kernels + expert-parallel exchange
  dispatch: str = ""             # moe.dispatch override ("" = the preset's)
  remat: bool = False            # recompute each decoder layer in the backward pass

  @property
  def path(self) -> str:
    """How the step was built, for the table: attention, MoE path, remat."""
    cfg = get_config(self.config)
    parts = [f"{self.attn_impl} attn"]
    if cfg.moe.enabled:
      parts.append(f"{self.moe_impl} MoE {self.dispatch or cfg.moe.dispatch}")
    if self.remat:
      parts.append("remat")
    return ", ".join(parts)


# Slices sized so the f32 weights + AdamW state (12 bytes/param) take a fraction of the
# slice's HBM; sequences of 2048 (the XLA attention keeps S x S scores per head for the
# backward pass, which dominates memory beyond that; 1M tokens go through ring attention).
# remat where the planner's activation estimate (or a compile without it) exceeds HBM.
# MoE members run the Pallas expert-parallel path with capacity dispatch: XLA's dropless
# lax.ragged_dot is partitioned densely on TPU (~88x the model FLOPs, 109 GiB/chip for
# Flash-Lite), and the dropless exchange's worst-case receive buffer (experts x tokens rows)
# is what its gmm kernels are sized (and costed) for; see the README for the measurement.
_MOE = dict(moe_impl="pallas", dispatch="capacity")
FAMILY_ROWS = (
    Row("nano1", "v5e:4x4", 16, 2048, remat=True,
        why="1.8B dense: a 16-chip v5e slice; the scanned step needs 16.1 GiB/chip without "
            "remat"),
    Row("nano2", "v5e:4x4", 16, 2048, remat=True,
        why="3.3B dense; without remat 17-19 GiB/chip at every compiled mesh"),
    Row("flash_lite", "v5e:8x8", 64, 2048, remat=True, **_MOE,
        why="14B MoE (16 experts, top-1)"),
    Row("flash", "v5p:4x4x4", 64, 2048, remat=True, **_MOE,
        why="67B MoE (32 experts, top-2): one v5p cube; without remat the step fits (89.3 "
            "GiB/chip) but its two-block cost compile does not"),
    Row("pro", "v5p:8x8x8", 256, 2048, remat=True, **_MOE,
        why="837B MoE (64 experts): 10 TB of train state"),
    Row("ultra", "v5p:8x8x8", 128, 2048, remat=True,
        why="464B dense: 5.6 TB of train state; at 256 x 2048 it needs 131 GiB/chip even "
            "with remat (fsdp=128,tensor=4)"),
    Row("pro", "v5p:8x8x8", 8, 1 << 20, attn_impl="ring", remat=True, **_MOE,
        mesh=(("context", 64), ("expert", 8)),
        why="Pro at 1M tokens: sequence over 64-way ring attention, batch and experts over 8"),
)

QUICK_ROWS = (
    Row("nano_tiny", "v5e:2x2", 8, 256, why="CI form"),
)


@dataclasses.dataclass
class Result:
  row: Row
  plan: Optional[planner.Plan]
  analysis: Optional[an.Analysis]       # the chosen (best or closest) compiled mesh
  error: str = ""


def run(rows, *, max_compiles: int = 2, cache_dir: Optional[str] = None, cache_only: bool = False, log=print) -> List[Result]:
  """Runs every row; a row that fails to compile is reported with its error, not raised."""
  out = []
  for row in rows:
    cfg = main_lib.with_dispatch(get_config(row.config), row.dispatch)
    kw = dict(attn_impl=row.attn_impl, moe_impl=row.moe_impl, remat=row.remat,
              cache_dir=cache_dir, cache_only=cache_only, log=log)
    try:
      if row.mesh is not None:
        log(f"compiling {row.config} on {row.topology} mesh {dict(row.mesh)} ...")
        a = an.analyze(cfg, row.topology, dict(row.mesh), row.batch, row.seq, **kw)
        out.append(Result(row, None, a))
      else:
        p = planner.plan(cfg, row.topology, row.batch, row.seq, max_compiles=max_compiles,
                         include_naive=False, **kw)
        pick = p.best or p.closest
        out.append(Result(row, p, pick.analysis))
    except an.NotCached:
      out.append(Result(row, None, None, "not compiled yet (run without --cached_only)"))
    except Exception as e:  # pylint: disable=broad-except  (a report row, not a crash)
      log(f"{row.config} on {row.topology}: {type(e).__name__}: {e}")
      out.append(Result(row, None, None, f"{type(e).__name__}: {str(e)[:300]}"))
  return out


def _model_flops_per_chip(a: an.Analysis) -> float:
  return a.model_flops_per_token * a.tokens_per_step / a.chips


def _hidden_flops(a: an.Analysis) -> bool:
  return 0 < a.figures.flops < 0.8 * _model_flops_per_chip(a)


def _mfu_cell(a: an.Analysis, e) -> str:
  """MFU, marked as an upper bound when the compiler saw fewer FLOPs than the model has
  (work inside kernels without a cost estimate, or loop bodies counted once): the roofline
  then runs at model FLOPs. 0.8: XLA's count of plain dense steps is within ~10-15 %."""
  if not a.figures.flops:
    return "n/a"
  return ("≤" if _hidden_flops(a) else "") + f"{e.mfu:.0%}"


def _gib(x: float) -> str:
  return f"{x / 2**30:,.1f}"


def markdown(results: List[Result]) -> str:
  """The report table plus one line per row on how it was compiled."""
  head = ("member", "slice", "batch x seq", "path", "best mesh", "GiB/chip (HBM)",
          "step (ms)", "bound", "tokens/s", "MFU", "fits")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  notes = []
  for r in results:
    row = r.row
    cells = [row.config, f"{row.topology}", f"{row.batch} x {row.seq:,}", row.path]
    if r.analysis is None:
      cells += ["-"] * 6 + [r.error if r.error.startswith("not compiled") else f"error: {r.error}"]
    else:
      a, e = r.analysis, r.analysis.estimate()
      cells += [compile_step.format_mesh(a.mesh),
                f"{_gib(a.figures.total_bytes)} ({_gib(a.chip.hbm_bytes)})",
                f"{e.step_time * 1e3:,.0f}", e.bound, f"{e.tokens_per_second:,.0f}",
                _mfu_cell(a, e), "yes" if e.fits else
                f"**no** ({a.figures.total_bytes / a.chip.hbm_bytes:.1f}x HBM)"]
      notes.append(f"- {row.config} on {row.topology} ({row.why}): {a.note}; "
                   + (r.plan.verdict() if r.plan else "fixed mesh")
                   + f"; compiled FLOPs/chip {a.figures.flops:.2e} (model "
                   f"{_model_flops_per_chip(a):.2e}), ICI "
                   f"{a.figures.collectives.total_ici_bytes / 2**30:,.1f} GiB/chip/step; "
                   f"compile {a.compile_seconds / 60:.0f} min on 2 shared cores.")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def plot(results: List[Result], path: str) -> None:
  """Two panels: memory per chip against HBM, and predicted MFU, per row (PNG)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ok = [r for r in results if r.analysis is not None]
  labels = [f"{r.row.config}\n{r.row.topology}" + ("\n1M ring" if r.row.attn_impl == "ring" else "")
            for r in ok]
  mem = [r.analysis.figures.total_bytes / 2**30 for r in ok]
  hbm = [r.analysis.chip.hbm_bytes / 2**30 for r in ok]
  mfu = [r.analysis.estimate().mfu * 100 if r.analysis.figures.flops else 0.0 for r in ok]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(ok) + 4), 4.5))
  x = range(len(ok))
  ax1.bar(x, mem, color=["tab:blue" if m <= h else "tab:red" for m, h in zip(mem, hbm)])
  ax1.scatter(x, hbm, marker="_", s=600, color="black", label="HBM per chip")
  ax1.set_yscale("log")
  ax1.set_ylim(bottom=min(mem + hbm) / 10)
  ax1.set_ylabel("GiB per chip (compiled)")
  ax1.set_xticks(list(x), labels, fontsize=7)
  ax1.legend(fontsize=8)
  ax1.set_title("Memory per chip (red: does not fit)")
  upper = [_hidden_flops(r.analysis) for r in ok]
  ax2.bar(x, mfu, color="tab:green", hatch=["//" if u else "" for u in upper])
  ax2.set_ylabel("predicted MFU (%); hatched: upper bound")
  ax2.set_xticks(list(x), labels, fontsize=7)
  ax2.set_title("Roofline MFU of the best mesh")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
