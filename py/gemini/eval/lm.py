"""Language models answering lm-evaluation-harness requests. RequestLM turns requests into
scoring items and generation rows; a subclass runs them: GeminiLM (params + config on JAX),
native_lm.NativeLM (a .gnb or GGUF in the C++ int4 runtime).

loglikelihood: the context and context+continuation are encoded separately and the
continuation's tokens are those after the context's (trailing spaces of the context move to
the continuation first, as lm-eval does, so " answer" tokenises as in running text); the
model's BOS (when it has one) is the prefix token, so an empty context still conditions on
something. Inputs longer than max_seq_len are cut from the left.

loglikelihood_rolling: log p(text) with windows of at most max_seq_len inputs; each window
predicts `stride` new tokens (default: max_seq_len, i.e. disjoint windows) with as much
preceding context as fits.

generate_until: requests with equal (max_gen_toks, temperature, top_p, until, seed) share
batches of batch_size rows, longest prompt first; row j of such a group samples with the
group's seed and its batch's offset, so its text does not depend on the other groups.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import jax

from gemini.config import ModelConfig
from gemini.eval import generate as gen_lib
from gemini.eval import scoring
from gemini.eval.requests import GenerateUntil, Loglikelihood, LoglikelihoodRolling


class RequestLM:
  """The request logic over a tokenizer; subclasses give `score(items) -> [Score]`,
  `generate(rows, until, max_new, temperature, top_p, seed, offset) -> [str]` and
  `describe() -> str`."""

  def __init__(self, tokenizer, *, max_seq_len: int, batch_size: int = 8,
               max_len: Optional[int] = None, name: str = "model", chat_template: str = "",
               bos_in_generation: bool = True):
    self.tokenizer, self.name, self.chat_template = tokenizer, name, chat_template
    # generate_until prefixes BOS unless False (lm-eval's HF models add none by default; for
    # SmolLM2 the BOS is <|im_start|>, a chat-turn opener in front of bare code).
    self.bos_in_generation = bos_in_generation
    self.batch_size = batch_size
    self.max_len = min(max_len or max_seq_len, max_seq_len)

  def _prefix(self) -> List[int]:
    bos = self.tokenizer.bos_id
    return [] if bos is None else [bos]

  def _with_prefix(self, ids: List[int]) -> List[int]:
    """BOS + ids, unless the text already began with the BOS token (a chat-template context
    whose first token, <|im_start|>, is the model's BOS)."""
    pre = self._prefix()
    return list(ids) if pre and ids[:1] == pre else pre + list(ids)

  def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
    n = len(context) - len(context.rstrip(" "))
    if n:
      context, continuation = context[:-n], context[-n:] + continuation
    ctx = self.tokenizer.encode(context)
    whole = self.tokenizer.encode(context + continuation)
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
      return self._prefix() + ctx, whole[len(ctx):]
    return self._prefix() + ctx, self.tokenizer.encode(continuation)

  def _pair_item(self, ctx: List[int], cont: List[int]) -> scoring.Item:
    if not cont:
      raise ValueError("loglikelihood: the continuation encodes to no tokens")
    full = (ctx + cont)[-(self.max_len + 1):]
    n_cont = min(len(cont), len(full) - 1)
    inputs, targets = full[:-1], full[1:]
    mask = [0] * (len(targets) - n_cont) + [1] * n_cont
    return scoring.Item(inputs, targets, mask)

  def loglikelihood(self, requests: Sequence[Loglikelihood]) -> List[Tuple[float, bool]]:
    items = [self._pair_item(*self.encode_pair(r.context, r.continuation)) for r in requests]
    scores = self.score(items)
    return [(s.logprob, s.greedy) for s in scores]

  def rolling_items(self, ids: List[int], stride: Optional[int] = None) -> List[scoring.Item]:
    """Windows over prefix + ids covering every token of ids exactly once."""
    m = self.max_len
    stride = min(stride or m, m)
    toks = self._prefix() + list(ids)
    first = 1        # toks[0] is the prefix (or, without one, the unscored first token)
    items = []
    for a in range(first, len(toks), stride):
      b = min(a + stride, len(toks))
      lo = max(0, b - 1 - m)
      inputs, targets = toks[lo:b - 1], toks[lo + 1:b]
      mask = [1 if lo + 1 + j >= a else 0 for j in range(len(targets))]
      items.append(scoring.Item(inputs, targets, mask))
    return items

  def rolling_scores(self, requests: Sequence[LoglikelihoodRolling],
                     stride: Optional[int] = None) -> List[Tuple[float, int]]:
    """(sum log p, tokens scored) per text."""
    per_req, items = [], []
    for r in requests:
      its = self.rolling_items(self.tokenizer.encode(r.text), stride)
      per_req.append(len(its))
      items += its
    scores = self.score(items)
    out, k = [], 0
    for n in per_req:
      part = scores[k:k + n]
      out.append((sum(s.logprob for s in part), sum(s.num_tokens for s in part)))
      k += n
    return out

  def loglikelihood_rolling(self, requests: Sequence[LoglikelihoodRolling],
                            stride: Optional[int] = None) -> List[float]:
    return [lp for lp, _ in self.rolling_scores(requests, stride)]

  def generate_until(self, requests: Sequence[GenerateUntil]) -> List[str]:
    """See the module docstring."""
    out: List[Optional[str]] = [None] * len(requests)
    groups = {}
    for i, r in enumerate(requests):
      groups.setdefault((r.max_gen_toks, r.temperature, r.top_p, r.until, r.seed), []).append(i)
    for (max_new, temp, top_p, until, seed), idx in groups.items():
      enc = [self.tokenizer.encode(requests[i].context) for i in idx]
      prompts = {i: self._with_prefix(e) if self.bos_in_generation or not e else e
                 for i, e in zip(idx, enc)}
      idx = sorted(idx, key=lambda i: -len(prompts[i]))
      for lo in range(0, len(idx), self.batch_size):
        chunk = idx[lo:lo + self.batch_size]
        keep = self.max_len - max_new
        rows = [prompts[i][-keep:] for i in chunk]
        texts = self.generate(rows, until, max_new, temp, top_p, seed, lo)
        for i, t in zip(chunk, texts):
          out[i] = t
    return out


class GeminiLM(RequestLM):
  """Our model on JAX: `params` (float or int4 leaves) + `cfg`."""

  def __init__(self, params, cfg: ModelConfig, tokenizer, **kw):
    super().__init__(tokenizer, max_seq_len=cfg.max_seq_len, **kw)
    self.params, self.cfg = params, cfg

  def describe(self) -> str:
    return (f"{self.cfg.name} on JAX, {self.cfg.n_layers} layers, vocab "
            f"{self.cfg.vocab_size}")

  def score(self, items: Sequence[scoring.Item]) -> List[scoring.Score]:
    return scoring.score_items(self.params, self.cfg, items, self.batch_size)

  def generate(self, rows, until, max_new, temperature, top_p, seed, offset) -> List[str]:
    n = len(rows)
    rows = list(rows) + [rows[-1]] * (self.batch_size - n)      # fixed batch shape
    texts = gen_lib.generate_batch(
        self.params, self.cfg, self.tokenizer, rows, until, max_new, temperature=temperature,
        top_p=top_p, key=jax.random.fold_in(jax.random.key(seed), offset))
    return texts[:n]
