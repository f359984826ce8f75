"""Thinking: a `<think>...</think>` scratchpad before the answer, capped by a budget as serving
caps it.

Representation. SmolLM2's vocabulary (49,152 ids; specials 0-16 are ChatML and code-corpus
markers) has no `<think>`. `add_specials` adds `<think>` and `</think>` to the tokenizer as
two new special tokens, ids 49,152 and 49,153 (the tokenizers library appends added tokens
after the vocabulary), so they are single ids that text can never produce by accident, and
the student's vocabulary is sized to hold them (`VOCAB_EXTRA`). Serving's BPE tokenizer finds
them by name (`token_to_id("<think>")`), so a tokenizer saved with them gives serving its
thinking budget unchanged. We did not reuse one of the code-corpus specials (<jupyter_text>,
...): their names would lie in every decoded transcript.

Budget. `generate` reproduces serving's `request.Tracker` by running it: a budget of 0 turns
thinking off (no `<think>` appended to the prompt); otherwise the prompt gets the tracker's
`prompt_suffix()` (`<think>`), the model writes thought tokens until it emits `</think>` or
the tracker, having counted `budget` thought tokens, sets `forced = </think>`, which is then
appended; the answer follows until `<|im_end|>`. The difference from serving: decode.generate
takes no token mask, so the answer is not barred from emitting thinking specials (the
answer's text is read after the last `</think>` anyway, `tasks.final_line`).
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

from gemini.serve import request as request_lib

OPEN, CLOSE = "<think>", "</think>"
VOCAB_EXTRA = 64          # rows added to the 49,152-id vocabulary (holds the two specials)


def add_specials(tok) -> Tuple[int, int]:
  """Adds <think>/</think> to a tokenizers.Tokenizer (in place, idempotent) -> their ids."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  if tok.token_to_id(OPEN) is None:
    tok.add_special_tokens([tokenizers.AddedToken(OPEN, special=True, normalized=False),
                            tokenizers.AddedToken(CLOSE, special=True, normalized=False)])
  return int(tok.token_to_id(OPEN)), int(tok.token_to_id(CLOSE))


@dataclasses.dataclass
class TrackerTokenizer:
  """The part of serving's tokenizer a `request.Tracker` reads."""
  tok: object
  vocab_size: int
  think_open: int
  think_close: int
  eos_ids: frozenset

  def decode(self, ids):
    return self.tok.decode([int(i) for i in ids])


@dataclasses.dataclass
class Thought:
  prompt: List[int]
  thought: List[int]          # thought ids (without <think>/</think>)
  forced: bool                # the budget closed it
  answer: List[int]           # answer ids (up to and including <|im_end|> if it came)
  opened: bool = False        # thinking was on (<think> followed the prompt)

  def tokens(self, ttok: TrackerTokenizer) -> List[int]:
    mid = [ttok.think_open] + self.thought + [ttok.think_close] if self.opened else []
    return self.prompt + mid + self.answer


def generate(policy, ttok: TrackerTokenizer, prompts: Sequence[np.ndarray], budget: int,
             max_answer: int, stop_id: int) -> List[Thought]:
  """Budgeted thinking then the answer, for every prompt (policy as in episodes.Policy)."""
  trackers = [request_lib.Tracker(
      request_lib.Request(p, request_lib.GenParams(max_tokens=max_answer,
                                                   thinking_budget=budget), lambda ev: None),
      ttok) for p in prompts]
  suffix = trackers[0].prompt_suffix() if trackers else []
  prompts = [[int(t) for t in p] for p in prompts]
  if not suffix:
    outs = policy([np.asarray(p, np.int32) for p in prompts], max_answer, stop_id)
    return [Thought(p, [], False, [int(x) for x in o]) for p, o in zip(prompts, outs)]
  outs = policy([np.asarray(p + suffix, np.int32) for p in prompts], budget, ttok.think_close)
  res = []
  for p, tr, o in zip(prompts, trackers, outs):
    ids, forced = [], False
    for t in (int(x) for x in o):
      tr.on_token(t)
      if not tr.in_thought:
        break
      ids.append(t)
      if tr.forced == ttok.think_close:
        forced = True
        break
    res.append(Thought(p, ids, forced, [], opened=True))
  outs = policy([np.asarray(r.prompt + suffix + r.thought + [ttok.think_close], np.int32)
                 for r in res], max_answer, stop_id)
  for r, o in zip(res, outs):
    r.answer = [int(x) for x in o]
  return res
