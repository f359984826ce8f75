"""The planner on real TPU compiles: Pro on one v5p cube (v5p:4x4x4, 64 chips).

Pro is 837B parameters: 10 TB of f32 weights + AdamW moments against 64 x 95 GiB = 6.3 TB of
HBM, so no mesh fits; the planner must say so and by how much, and its closest mesh must
differ from the naive all-data mesh, which needs the whole state on every chip. The whole
model is compiled (its 64 layers a scan), as the output states.
"""

import pytest

from gemini.config import get_config
from gemini.train.aot import main as aot_main
from gemini.train.aot import planner


@pytest.fixture(scope="module")
def pro_plan():
  return planner.plan(get_config("pro"), "v5p:4x4x4", 64, 1024, max_compiles=1,
                      cache_dir="")


def test_pro_on_one_cube_does_not_fit_and_says_by_how_much(pro_plan):
  assert pro_plan.best is None
  verdict = pro_plan.verdict()
  assert verdict.startswith("NOTHING FITS") and "GiB over" in verdict
  closest = pro_plan.closest
  assert closest.analysis is not None and "compiled all 64 layers" in closest.analysis.note
  # Even the best sharding needs more than the chip: 10 TB / 64 chips > 95 GiB.
  assert closest.analysis.figures.total_bytes > pro_plan.hbm_bytes
  assert closest.analysis.figures.argument_bytes >= closest.analysis.state_bytes / 64


def test_planner_choice_differs_from_all_data_because_of_memory(pro_plan):
  naive, pick = pro_plan.naive, pro_plan.closest
  assert naive is not None and naive.mesh["data"] == 64
  assert pick.mesh != naive.mesh
  # All-data replicates the state: every chip holds all of it.
  assert naive.analysis.figures.argument_bytes >= naive.analysis.state_bytes * 0.99
  assert naive.analysis.figures.total_bytes > 20 * pick.analysis.figures.total_bytes
  text = aot_main.format_plan(pro_plan)
  assert "NOTHING FITS" in text and "the plan differs because it does not fit" in text
  assert "state alone" in text      # meshes dropped before compiling are listed with why
