"""Chat format for post-training: ChatML turns with the tokenizer's turn specials, the loss
mask on the model's turns, and packing that keeps every conversation in its own segment.

    <|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{text}<|im_end|>\n

(SmolLM2's template; `<|im_start|>`/`<|im_end|>` are single special tokens.) Only the
assistant's content and its closing `<|im_end|>` are trained on: `loss_mask[i]` is 1 iff
target token i+1 lies inside an assistant turn's body, so a token of any other turn can only
act as context. Packing places whole conversations in rows with distinct `segment_ids`
(1, 2, ...; 0 = padding) and positions restarting at 0, and the model's attention never
crosses segments, so a packed conversation computes exactly what it computes alone.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  tokenizer: object          # .encode(text).ids
  im_start: int
  im_end: int
  newline: Tuple[int, ...]   # ids of "\n"

  @staticmethod
  def from_tokenizer(tok) -> "ChatFormat":
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    if start is None or end is None:
      raise ValueError("tokenizer has no <|im_start|>/<|im_end|> specials for the chat format")
    return ChatFormat(tok, int(start), int(end), tuple(tok.encode("\n").ids))

  def _text(self, s: str) -> List[int]:
    return list(self.tokenizer.encode(s).ids) if s else []

  def encode(self, turns: Sequence[Dict[str, str]],
             generation_prompt: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """turns [{"role", "content"}] -> (tokens int32 [N], model bool [N]: token is part of an
    assistant turn's body or its <|im_end|>). generation_prompt appends the assistant header."""
    toks: List[int] = []
    model: List[bool] = []

    def put(ids, flag):
      toks.extend(ids)
      model.extend([flag] * len(ids))
    for t in turns:
      if t["role"] not in ROLES:
        raise ValueError(f"chat turn role {t['role']!r}: expected one of {ROLES}")
      mine = t["role"] == "assistant"
      put([self.im_start] + self._text(t["role"]) + list(self.newline), False)
      put(self._text(t["content"]) + [self.im_end], mine)
      put(list(self.newline), False)
    if generation_prompt:
      put([self.im_start] + self._text("assistant") + list(self.newline), False)
    return np.asarray(toks, np.int32), np.asarray(model, bool)


def example_arrays(tokens: np.ndarray, model: np.ndarray) -> Dict[str, np.ndarray]:
  """One conversation -> inputs/targets/loss_mask of length N-1 (next-token pairs)."""
  return {"tokens": tokens[:-1], "targets": tokens[1:], "loss_mask": model[1:].astype(np.float32)}


def pack(examples: Sequence[Tuple[np.ndarray, np.ndarray]], seq_len: int) -> Dict[str, np.ndarray]:
  """Greedy in-order packing of whole conversations into [R, seq_len] rows. A conversation
  longer than seq_len + 1 tokens is refused (no silent truncation of an answer)."""
  rows: List[List[Dict[str, np.ndarray]]] = [[]]
  used = [0]
  for i, (tok, model) in enumerate(examples):
    ex = example_arrays(tok, model)
    n = len(ex["tokens"])
    if n > seq_len:
      raise ValueError(f"conversation {i} has {n + 1} tokens > seq_len + 1 = {seq_len + 1}")
    if used[-1] + n > seq_len:
      rows.append([])
      used.append(0)
    rows[-1].append(ex)
    used[-1] += n
  out = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("tokens", "targets",
                                                               "segment_ids", "positions")}
  out["loss_mask"] = np.zeros((len(rows), seq_len), np.float32)
  for r, row in enumerate(rows):
    at = 0
    for seg, ex in enumerate(row, start=1):
      n = len(ex["tokens"])
      sl = slice(at, at + n)
      out["tokens"][r, sl] = ex["tokens"]
      out["targets"][r, sl] = ex["targets"]
      out["loss_mask"][r, sl] = ex["loss_mask"]
      out["segment_ids"][r, sl] = seg
      out["positions"][r, sl] = np.arange(n)
      at += n
  return out
