"""One generation request and the per-token bookkeeping every backend shares.

`Tracker.on_token` turns sampled ids into events: thought text between <think> and </think>
(counted apart, closed by a forced </think> once the thinking budget is spent), answer text
with stop sequences held back until they can no longer match, the end of the answer at a stop
id, a stop sequence, a completed JSON constraint, max_tokens, a deadline or cancellation.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from gemini.serve import sampling

DYNAMIC_THINKING_CAP = 256      # thinking budget -1: the model decides, up to this many tokens


@dataclasses.dataclass
class GenParams:
  max_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: Tuple[str, ...] = ()
  thinking_budget: int = 0        # 0 off, -1 dynamic, N at most N thought tokens
  constraint: Optional[object] = None   # constrain.Constraint over the answer
  timeout_s: float = 600.0


@dataclasses.dataclass
class Event:
  kind: str                       # "delta" | "done"
  text: str = ""
  thought: bool = False
  finish_reason: Optional[str] = None   # stop | length | cancelled | timeout | error
  usage: Optional[dict] = None
  error: Optional[str] = None


class Request:
  """A prompt + GenParams + a callback that receives Events (called on the engine's thread).
  media: (start, kind, array) per media item whose placeholder ids sit in tokens at start."""

  def __init__(self, tokens: Sequence[int], params: GenParams, emit: Callable[[Event], None],
               media: Sequence[Tuple[int, str, np.ndarray]] = ()):
    self.tokens = [int(t) for t in tokens]
    self.media = list(media)
    self.params = params
    self.emit = emit
    self.cancelled = threading.Event()
    self.t_submit = time.monotonic()
    self.t_first: Optional[float] = None
    self.token_times: List[float] = []
    self.cached_tokens = 0

  def cancel(self):
    self.cancelled.set()


class Tracker:
  """Follows one request's sampled tokens (see the module docstring)."""

  def __init__(self, req: Request, tok):
    self.req, self.tok = req, tok
    p = req.params
    self.thinking = p.thinking_budget != 0 and tok.think_open is not None
    self.budget = (DYNAMIC_THINKING_CAP if p.thinking_budget < 0 else p.thinking_budget)
    self.in_thought = self.thinking
    self.thought_ids: List[int] = []
    self.answer_ids: List[int] = []
    self.count = 0                        # sampled tokens so far (the PRNG counter)
    self.sent_answer = 0                  # characters of answer text emitted
    self.sent_thought = 0
    self.finished: Optional[str] = None
    self.forced: int = -1
    self.words = sampling.full_mask_words(tok.vocab_size)
    self.banned = ([tok.think_open, tok.think_close]
                   if tok.think_open is not None else [])
    # False: mask() is None for every token (no thinking, constraint or banned ids).
    self.masked = bool(self.thinking or p.constraint is not None or self.banned)

  def prompt_suffix(self) -> List[int]:
    """Tokens appended to the prompt: <think> opens the thinking section when it is on."""
    return [self.tok.think_open] if self.thinking else []

  def mask(self) -> Optional[np.ndarray]:
    """Allowed-token words for the next sample (None = everything)."""
    if self.in_thought:
      m = sampling.all_allowed(1, self.tok.vocab_size)[0]
      m.view(np.uint32)[self.tok.think_open // 32] &= ~np.uint32(1 << (self.tok.think_open % 32))
      return m
    c = self.req.params.constraint
    m = c.mask() if c is not None else None
    if self.banned:
      m = sampling.all_allowed(1, self.tok.vocab_size)[0] if m is None else m.copy()
      words = m.view(np.uint32)
      for t in self.banned:
        words[t // 32] &= ~np.uint32(1 << (t % 32))
    return m

  def on_token(self, t: int) -> None:
    now = time.monotonic()
    req, p = self.req, self.req.params
    self.count += 1
    self.forced = -1
    if req.t_first is None:
      req.t_first = now
    req.token_times.append(now)
    if self.in_thought:
      if t == self.tok.think_close:
        self.in_thought = False
        self._flush_thought(final=True)
      else:
        self.thought_ids.append(t)
        self._flush_thought(final=False)
        if len(self.thought_ids) >= self.budget:
          self.forced = self.tok.think_close
      return self._check_limits(now)
    c = p.constraint
    if c is not None:
      c.advance(t)
      if t not in self.tok.eos_ids:
        self.answer_ids.append(t)
      if c.done():
        self._flush_answer(final=True)
        return self._finish("stop")
    elif t in self.tok.eos_ids:
      self._flush_answer(final=True)
      return self._finish("stop")
    else:
      self.answer_ids.append(t)
    if self._flush_answer(final=False):
      return self._finish("stop")
    if len(self.answer_ids) >= p.max_tokens:
      self._flush_answer(final=True)
      return self._finish("length")
    self._check_limits(now)

  def _check_limits(self, now):
    if self.finished:
      return
    if self.req.cancelled.is_set():
      self._finish("cancelled")
    elif now - self.req.t_submit > self.req.params.timeout_s:
      self._flush_answer(final=True)
      self._finish("timeout")
    elif len(self.thought_ids) + len(self.answer_ids) >= self.budget + self.req.params.max_tokens + 1:
      self._finish("length")

  def _flush_thought(self, final: bool):
    text = self.tok.decode(self.thought_ids)
    if not final and text.endswith("\ufffd"):
      return
    if len(text) > self.sent_thought:
      self.req.emit(Event("delta", text[self.sent_thought:], thought=True))
      self.sent_thought = len(text)

  def _flush_answer(self, final: bool) -> bool:
    """Emits answer text that can no longer be part of a stop sequence; True if a stop
    sequence appeared (the text is cut before it)."""
    text = self.tok.decode(self.answer_ids)
    stops = self.req.params.stop
    hit = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if hit >= 0:
      text, final = text[:hit], True
    safe = len(text)
    if not final:
      if text.endswith("\ufffd"):
        safe = len(text) - 1
      for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
          if text.endswith(s[:k]):
            safe = min(safe, len(text) - k)
            break
    if safe > self.sent_answer:
      self.req.emit(Event("delta", text[self.sent_answer:safe]))
      self.sent_answer = safe
    self.answer_text = text
    return hit >= 0

  def _finish(self, reason: str):
    self.finished = reason
    self.req.emit(Event("done", finish_reason=reason, usage=self.usage()))

  def fail(self, message: str):
    self.finished = "error"
    self.req.emit(Event("done", finish_reason="error", usage=self.usage(), error=message))

  def usage(self) -> dict:
    return {"prompt_tokens": len(self.req.tokens), "completion_tokens":
            len(self.answer_ids) + len(self.thought_ids), "thought_tokens": len(self.thought_ids),
            "cached_tokens": self.req.cached_tokens}
