"""The safety-filter hook on prompts and outputs, in Gemini's safetySettings / safetyRatings
shape. The default filter is a small lexicon per harm category (the policy categories of the
Gemini 1.0 report: harassment, hate speech, sexually explicit, dangerous content): the number
of distinct lexicon hits sets the probability level, and a request's threshold per category
decides whether it blocks. Any object with the same `check` method can replace it.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

CATEGORIES = ("HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH",
              "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT")
LEVELS = ("NEGLIGIBLE", "LOW", "MEDIUM", "HIGH")
THRESHOLDS = {"BLOCK_NONE": 4, "OFF": 4, "BLOCK_ONLY_HIGH": 3, "BLOCK_MEDIUM_AND_ABOVE": 2,
              "BLOCK_LOW_AND_ABOVE": 1, "HARM_BLOCK_THRESHOLD_UNSPECIFIED": 2}

LEXICON: Dict[str, Tuple[str, ...]] = {
    "HARM_CATEGORY_HARASSMENT": ("you are worthless", "kill yourself", "nobody likes you",
                                 "you idiot", "shut up loser"),
    "HARM_CATEGORY_HATE_SPEECH": ("subhuman", "inferior race", "ethnic cleansing",
                                  "go back to your country"),
    "HARM_CATEGORY_SEXUALLY_EXPLICIT": ("explicit sex", "pornographic", "nude photos"),
    "HARM_CATEGORY_DANGEROUS_CONTENT": ("build a bomb", "make a bomb", "nerve agent",
                                        "synthesize meth", "make explosives", "pipe bomb"),
}


class SafetyError(ValueError):
  def __init__(self, message, param):
    super().__init__(message)
    self.param = param


class LexiconFilter:
  """The default filter (see the module docstring)."""

  def __init__(self, lexicon: Dict[str, Sequence[str]] = LEXICON):
    self.patterns = {c: [re.compile(r"\b" + re.escape(p) + r"\b", re.I) for p in words]
                     for c, words in lexicon.items()}

  def ratings(self, text: str) -> List[dict]:
    out = []
    for c in CATEGORIES:
      hits = sum(1 for p in self.patterns.get(c, ()) if p.search(text or ""))
      out.append({"category": c, "probability": LEVELS[min(hits * 2, 3) if hits else 0]})
    return out

  def check(self, text: str, settings: Optional[List[dict]], field: str):
    """-> (blocked, ratings). No settings = default threshold (medium and above)."""
    limits = {c: THRESHOLDS["BLOCK_MEDIUM_AND_ABOVE"] for c in CATEGORIES}
    for i, s in enumerate(settings or []):
      if not isinstance(s, dict):
        raise SafetyError(f"{field}[{i}] must be an object", field)
      c, t = s.get("category"), s.get("threshold")
      if c not in CATEGORIES:
        raise SafetyError(f"{field}[{i}].category {c!r} is not one of {', '.join(CATEGORIES)}",
                          field)
      if t not in THRESHOLDS:
        raise SafetyError(f"{field}[{i}].threshold {t!r} is not one of {', '.join(THRESHOLDS)}",
                          field)
      limits[c] = THRESHOLDS[t]
    ratings = self.ratings(text)
    blocked = False
    for r in ratings:
      level = LEVELS.index(r["probability"])
      if level >= limits[r["category"]]:
        r["blocked"] = True
        blocked = True
    return blocked, ratings
