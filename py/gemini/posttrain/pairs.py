"""Verifiable preference pairs: for a task, the program's answer (chosen) against a wrong
answer (rejected) that the same program rejects.

Wrong answers are near misses of the right one, so a reward model has to read the task:
  arithmetic/units/letter count  the right number +- a small offset (or x10 for units)
  reverse / capitals             the word unchanged, or another word's transform
  define                         another word's gloss
  bible                          another book
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from gemini.posttrain import tasks as tasks_lib


def wrong_answer(t: tasks_lib.Task, bank: tasks_lib.TaskBank, rng: np.random.Generator) -> str:
  a = t.answer
  if a.lstrip("-").isdigit():
    v = int(a)
    if t.kind == "units" and rng.random() < 0.5:
      return str(v * 10)
    off = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
    return str(v + off)
  if t.kind == "strings":
    word = t.prompt.split("'")[1]
    other = bank.words[int(rng.integers(0, len(bank.words)))]
    if rng.random() < 0.5 or other == word:
      return word
    return other[::-1] if "Reverse" in t.prompt else other.upper()
  if t.kind == "define":
    other = bank.defined[int(rng.integers(0, len(bank.defined)))]
    return bank.glosses[other]
  if t.kind == "bible":
    books = sorted({b for b, _ in bank.verses} - {a})
    return books[int(rng.integers(0, len(books)))] if books else a + "s"
  raise ValueError(f"no wrong-answer rule for task kind {t.kind!r}")


def verifiable_pairs(items: List[tasks_lib.Task], bank: tasks_lib.TaskBank,
                     seed: int) -> List[Tuple[tasks_lib.Task, str, str]]:
  """(task, chosen, rejected) with check(chosen) true and check(rejected) false."""
  rng = np.random.default_rng(seed)
  out = []
  for t in items:
    for _ in range(5):
      bad = wrong_answer(t, bank, rng)
      if not tasks_lib.check(t.kind, bad, t.answer):
        out.append((t, t.answer, bad))
        break
  return out
