"""`bazel run //py/gemini/train:scale_report [-- --quick] [--out_dir DIR]`: the family's
train steps compiled for TPU slices; writes scale_report.md and scale_report.png.

Full run: every member on its slice (report.FAMILY_ROWS), the planner's best mesh, and Pro at
1M tokens with ring attention. Results are cached (~/.cache/gemini_aot), so a second run only
formats. --quick: one tiny row (CI form).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from gemini.train.aot import report


def main(argv: Optional[List[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true", help="one tiny row (CI form)")
  p.add_argument("--out_dir", default=None,
                 help="default: $BUILD_WORKSPACE_DIRECTORY/scale_report or ./scale_report")
  p.add_argument("--only", default="", help="comma-separated member names to keep")
  p.add_argument("--max_compiles", type=int, default=2, help="planner meshes per member")
  p.add_argument("--cache_dir", default=None, help="default ~/.cache/gemini_aot; '' disables")
  p.add_argument("--cached_only", action="store_true",
                 help="format what is cached; rows not compiled yet are listed as such")
  args = p.parse_args(argv)
  rows = report.QUICK_ROWS if args.quick else report.FAMILY_ROWS
  if args.only:
    keep = set(args.only.split(","))
    rows = tuple(r for r in rows if r.config in keep)
  out_dir = args.out_dir or os.path.join(
      os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd()), "scale_report")
  os.makedirs(out_dir, exist_ok=True)
  results = report.run(rows, max_compiles=args.max_compiles,
                       cache_dir=args.cache_dir, cache_only=args.cached_only,
                       log=lambda s: print(s, flush=True))
  md = ("# Gemini family: train steps compiled for TPU slices\n\n"
        "Per-chip figures from the TPU compiler (libtpu, ahead of time, nothing allocated); "
        "step time is the roofline max(compute, HBM, ICI) from published chip peaks "
        "(py/gemini/train/aot/hardware.py). f32 master weights + AdamW state; "
        "per-layer rematerialisation only where the path column says remat.\n\n" + report.markdown(results) + "\n![scale](scale_report.png)\n")
  md_path = os.path.join(out_dir, "scale_report.md")
  with open(md_path, "w") as f:
    f.write(md)
  png_path = os.path.join(out_dir, "scale_report.png")
  report.plot(results, png_path)
  print(md)
  print(f"wrote {md_path} and {png_path}")
  return 0 if all(r.analysis is not None for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
