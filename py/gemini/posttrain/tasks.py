"""Tasks whose answers a program knows, from what ships in this repo's Debian packages.

Each task kind draws (prompt, answer) pairs from a seeded RNG and checks a model's reply:
  arithmetic  "What is 47 + 385?" -> "432" (+, -, x; `digits` per operand)
  units       "Convert 7 km to m." -> "7000" (km/m, m/cm, kg/g, h/min, min/s, ft/in)
  strings     reverse / uppercase / letter count of a WordNet lemma
  define      "Define WORD." -> its WordNet gloss (checked by word overlap >= 0.5)
  bible       a KJV verse -> the book it is from (Debian bible-kjv)
`check(kind, reply, answer)` reads the first line of the reply (after any </think>).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Callable, Dict, List, Optional

import numpy as np

KINDS = ("arithmetic", "units", "strings", "define", "bible")
INT_KINDS = ("arithmetic", "units", "calc", "add", "count")   # (the last three: agent_tasks.py)
UNITS = (("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("h", "min", 60),
         ("min", "s", 60), ("ft", "in", 12))


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str
  prompt: str
  answer: str


def _int_answer(reply: str) -> Optional[int]:
  m = re.search(r"-?\d+", reply.replace(",", ""))
  return int(m.group()) if m else None


def final_line(reply: str) -> str:
  """The answer part of a reply: after the last </think>, first non-empty line, stripped."""
  reply = reply.rsplit("</think>", 1)[-1]
  for line in reply.splitlines():
    if line.strip():
      return line.strip()
  return ""


def _words(s: str) -> List[str]:
  return re.findall(r"[a-z]+", s.lower())


def check(kind: str, reply: str, answer: str) -> bool:
  """True iff `reply` answers correctly (the program's judgement)."""
  got = final_line(reply)
  if kind in INT_KINDS or (kind == "strings" and answer.lstrip("-").isdigit()):
    return _int_answer(got) == int(answer)
  if kind == "define":
    want = set(_words(answer)) - {"a", "an", "the", "of", "or", "to", "and", "in", "as", "by"}
    have = set(_words(got))
    return bool(want) and len(want & have) / len(want) >= 0.5
  return got.strip(" .'\"").lower() == answer.lower()


class TaskBank:
  """Lemmas/glosses (WordNet) and verses (KJV) loaded once; `sample(kind, rng)` -> Task."""

  def __init__(self, words: List[str], glosses: Dict[str, str], verses: List[tuple],
               digits: int = 2):
    self.words, self.glosses, self.verses, self.digits = words, glosses, verses, digits
    self.defined = sorted(glosses)

  @staticmethod
  def load(digits: int = 2, max_bytes: int = 200_000) -> "TaskBank":
    from gemini.data import sources  # pylint: disable=import-outside-toplevel
    glosses: Dict[str, str] = {}
    for d in sources.wordnet(max_bytes):
      for line in d["text"].splitlines():
        lemmas, _, gloss = line.partition(": ")
        w = lemmas.split(", ")[0]
        if w.isalpha() and w.islower() and 3 <= len(w) <= 10 and w not in glosses:
          glosses[w] = gloss.split(";")[0].strip()
    verses = []
    for d in sources.bible(max_bytes * 5):
      title, *lines = d["text"].splitlines()
      book = title.rsplit(" ", 1)[0]
      for line in lines:
        num, _, text = line.partition(" ")
        if num.isdigit() and 30 <= len(text) <= 90:
          verses.append((book, text))
    return TaskBank(sorted(glosses), glosses, verses, digits)

  def sample(self, kind: str, rng: np.random.Generator) -> Task:
    if kind == "arithmetic":
      hi = 10 ** self.digits
      a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
      op = ["+", "-", "*"][int(rng.integers(0, 3))]
      val = a + b if op == "+" else a - b if op == "-" else a * b
      return Task(kind, f"What is {a} {op} {b}?", str(val))
    if kind == "units":
      src, dst, f = UNITS[int(rng.integers(0, len(UNITS)))]
      x = int(rng.integers(1, 100))
      return Task(kind, f"Convert {x} {src} to {dst}.", str(x * f))
    if kind == "strings":
      w = self.words[int(rng.integers(0, len(self.words)))]
      op = int(rng.integers(0, 3))
      if op == 0:
        return Task(kind, f"Reverse the word '{w}'.", w[::-1])
      if op == 1:
        return Task(kind, f"Write '{w}' in capital letters.", w.upper())
      return Task(kind, f"How many letters are in '{w}'?", str(len(w)))
    if kind == "define":
      w = self.defined[int(rng.integers(0, len(self.defined)))]
      return Task(kind, f"Define {w}.", self.glosses[w])
    if kind == "bible":
      book, text = self.verses[int(rng.integers(0, len(self.verses)))]
      return Task(kind, f"Which book of the Bible says: \"{text}\"?", book)
    raise ValueError(f"unknown task kind {kind!r}: expected one of {KINDS}")

  def split(self, kinds, n: int, seed: int) -> List[Task]:
    """n tasks cycling over `kinds`, from RNG `seed` (train and held-out use different seeds;
    held-out prompts that also occur in the train set are dropped by the caller)."""
    rng = np.random.default_rng(seed)
    return [self.sample(kinds[i % len(kinds)], rng) for i in range(n)]

  def partition(self, kinds, n_train: int, n_heldout: int, seed: int):
    """(train, held-out) task lists split by prompt (`is_heldout`), so held-out prompts never
    occur in training however large the training set (small prompt spaces like units' 594
    are covered whole by a few thousand draws). Train tasks may repeat a prompt; held-out
    prompts are distinct. Kinds are cycled in both."""
    return partition_by_prompt(self.sample, kinds, n_train, n_heldout, seed)


def partition_by_prompt(sample: Callable[[str, np.random.Generator], Task], kinds,
                        n_train: int, n_heldout: int, seed: int):
  """(train, held-out) drawn from `sample(kind, rng)` with kinds cycled, split by `is_heldout`;
  held-out prompts distinct, training prompts may repeat."""
  rng = np.random.default_rng(seed)
  train, held, seen = [], [], set()
  for i in range(50 * (n_train + n_heldout) + 1000):
    if len(train) >= n_train and len(held) >= n_heldout:
      break
    t = sample(kinds[i % len(kinds)], rng)
    if is_heldout(t.prompt):
      if len(held) < n_heldout and t.prompt not in seen:
        seen.add(t.prompt)
        held.append(t)
    elif len(train) < n_train:
      train.append(t)
  return train, held


def is_heldout(prompt: str, percent: int = 20) -> bool:
  """The fixed train/held-out split of the prompt space: CRC-32 of the prompt mod 100."""
  return zlib.crc32(prompt.encode("utf-8")) % 100 < percent
