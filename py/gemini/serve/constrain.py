"""JSON-schema constrained decoding: llguidance's token masks over our vocabularies.

A Constraint follows one request's answer tokens: `mask()` is the allowed set for the next token
(int32 words, 32 tokens each, the layout sampling.unpack_mask reads), `advance(tok)` commits a
sampled token, `done()` is true once the JSON value is complete (the engine then ends the
answer). Whitespace between JSON tokens is not allowed (no unbounded runs of spaces), so a
value closes within a bounded number of tokens for bounded schemas.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import llguidance
import numpy as np

_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(ValueError):
  """A JSON schema llguidance cannot compile (the message names the problem)."""


def compile_schema(llg_tokenizer, schema: dict, field: str = "schema") -> str:
  """Grammar text for `schema`; SchemaError naming `field` if it is not a usable schema."""
  if not isinstance(schema, dict):
    raise SchemaError(f"{field}: a JSON schema must be an object, got {type(schema).__name__}")
  try:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_OPTIONS)
  except (ValueError, TypeError) as e:
    raise SchemaError(f"{field}: {e}") from e
  err = llguidance.LLMatcher.validate_grammar(grammar, llg_tokenizer)
  if err and not err.startswith("WARNING"):
    raise SchemaError(f"{field}: invalid JSON schema: {err.splitlines()[0][:300]}")
  return grammar


class Constraint:
  """One request's matcher (see the module docstring)."""

  def __init__(self, llg_tokenizer, grammar: str, vocab_size: int):
    self.m = llguidance.LLMatcher(llg_tokenizer, grammar, log_level=0)
    self.words = (vocab_size + 31) // 32
    if self.m.is_error():
      raise SchemaError(self.m.get_error())

  def mask(self) -> np.ndarray:
    bits = np.frombuffer(self.m.compute_bitmask(), np.int32)
    out = np.zeros(self.words, np.int32)
    n = min(self.words, bits.size)
    out[:n] = bits[:n]
    return out

  def advance(self, token: int) -> bool:
    """Commits a token; False if the matcher rejected it (an error state)."""
    return bool(self.m.consume_token(int(token)))

  def done(self) -> bool:
    return self.m.is_stopped() or self.m.is_error()

  def accepting(self) -> bool:
    return self.m.is_accepting()


def tool_call_schema(tools: Sequence[dict], only: Optional[str] = None) -> dict:
  """Schema of one call {"name": <a declared tool>, "arguments": <its parameters>}; `only`
  restricts it to one named tool."""
  chosen = [t for t in tools if only is None or t["name"] == only]
  if not chosen:
    raise SchemaError(f"tool_choice: no declared tool is named {only!r}")
  alts = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
           "properties": {"name": {"const": t["name"]},
                          "arguments": t.get("parameters") or {"type": "object"}}}
          for t in chosen]
  return alts[0] if len(alts) == 1 else {"anyOf": alts}
