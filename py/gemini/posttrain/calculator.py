"""The calculator tool: exact arithmetic on a string, parsed by a recursive-descent parser.

Grammar (no names, no calls, no eval()):
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/" | "%") factor)*
    factor := ("+" | "-") factor | power
    power  := atom ("^" factor)?            (also "**"; right-associative, integer exponent)
    atom   := NUMBER | "(" expr ")"         (NUMBER: digits with an optional ".digits")
Values are `fractions.Fraction`s, so 1/3*3 is exactly 1. `evaluate` returns the value;
`calculate` returns the text a tool result carries: an integer, or a decimal rounded to 6
places, or raises CalcError with a message for the tool result's "error".
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import List

MAX_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 400          # refuse results longer than this (e.g. 9^64^64 chains)

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|(\*\*|[-+*/%^()]))")


class CalcError(ValueError):
  """An expression the calculator refuses (syntax, division by zero, too large)."""


def _tokens(text: str) -> List[str]:
  if len(text) > MAX_CHARS:
    raise CalcError(f"expression longer than {MAX_CHARS} characters")
  out, at = [], 0
  text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace(",", "")
  while at < len(text):
    if text[at:].strip() == "":
      break
    m = _TOKEN.match(text, at)
    if not m:
      raise CalcError(f"unexpected character {text[at:].lstrip()[0]!r}")
    out.append(m.group(1) or ("^" if m.group(2) == "**" else m.group(2)))
    at = m.end()
  return out


class _Parser:

  def __init__(self, toks: List[str]):
    self.toks, self.i = toks, 0

  def peek(self):
    return self.toks[self.i] if self.i < len(self.toks) else None

  def take(self):
    t = self.peek()
    if t is None:
      raise CalcError("expression ends early")
    self.i += 1
    return t

  def expr(self) -> Fraction:
    v = self.term()
    while self.peek() in ("+", "-"):
      v = v + self.term() if self.take() == "+" else v - self.term()
    return v

  def term(self) -> Fraction:
    v = self.factor()
    while self.peek() in ("*", "/", "%"):
      op, w = self.take(), self.factor()
      if op == "*":
        v = v * w
      elif w == 0:
        raise CalcError("division by zero")
      elif op == "/":
        v = v / w
      else:
        v = v - w * math.floor(v / w)
    return v

  def factor(self) -> Fraction:
    if self.peek() in ("+", "-"):
      return self.factor() if self.take() == "+" else -self.factor()
    return self.power()

  def power(self) -> Fraction:
    base = self.atom()
    if self.peek() != "^":
      return base
    self.take()
    e = self.factor()
    if e.denominator != 1 or abs(e) > MAX_EXPONENT:
      raise CalcError(f"exponent must be an integer of at most {MAX_EXPONENT} in size")
    if base == 0 and e < 0:
      raise CalcError("division by zero")
    v = base ** int(e)
    if len(str(v.numerator)) + len(str(v.denominator)) > MAX_DIGITS:
      raise CalcError("result too large")
    return v

  def atom(self) -> Fraction:
    t = self.take()
    if t == "(":
      v = self.expr()
      if self.take() != ")":
        raise CalcError("missing ')'")
      return v
    if t[0].isdigit():
      return Fraction(t)
    raise CalcError(f"unexpected {t!r}")


def evaluate(text: str) -> Fraction:
  """The exact value of an arithmetic expression (CalcError if it is not one)."""
  p = _Parser(_tokens(text))
  if p.peek() is None:
    raise CalcError("empty expression")
  v = p.expr()
  if p.peek() is not None:
    raise CalcError(f"unexpected {p.peek()!r}")
  return v


def format_value(v: Fraction) -> str:
  """An integer as its digits; otherwise a decimal rounded half-even to 6 places."""
  if v.denominator == 1:
    return str(v.numerator)
  n = round(v * 10 ** 6)                          # int, half-even
  sign, n = ("-" if n < 0 else ""), abs(n)
  s = f"{sign}{n // 10 ** 6}.{n % 10 ** 6:06d}".rstrip("0").rstrip(".")
  return "0" if s in ("-0", "") else s


def calculate(text: str) -> str:
  return format_value(evaluate(text))
