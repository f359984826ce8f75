"""The harness's requests on the native int4 runtime (`csrc/runtime` through `_runtime`): a
.gnb or a llama GGUF evaluated with no JAX on the hot path, as llama.cpp's perplexity and
server tools do.

    score:     one causal forward per item (Runtime.logits [T, V]) -> log-softmax in float64 ->
               the targets' log-probabilities and argmax flags at the masked positions
    generate:  per batch of rows, one KV state each; Runtime.prefill_batch reads every weight
               once for all prompts, then per step one NumPy sample per live row
               (native_sampling: temperature, top-p, a (seed, counter) stream per row) and one
               Runtime.decode_batch over the live rows; every `check_every` steps a row that
               produced EOS or a stop string is finished and leaves the batch

A row's random stream is seeded from (group seed, its index in the group), so its samples do not
depend on batch size or on the other rows; greedy rows are the runtime's own one-at-a-time
`generate` (native_lm_test holds them equal).
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from csrc.runtime import _runtime
from gemini.eval import generate as gen_lib
from gemini.eval import lm as lm_lib
from gemini.eval import scoring
from gemini.eval.tokenizer import RuntimeText
from gemini.serve import native_sampling


def row_seed(seed: int, index: int) -> int:
  return (int(seed) * 1_000_003 + int(index)) & 0xFFFFFFFF


class NativeLM(lm_lib.RequestLM):
  """`path`: a .gnb or GGUF; `tokenizer`: an eval tokenizer over its vocabulary. int8
  activations (the runtime's fast path) unless told; the KV cache is f16."""

  def __init__(self, path: str, tokenizer=None, *, threads: int = 2,
               int8_activations: bool = True, check_every: int = 4, **kw):
    self.rt = _runtime.Runtime(path, threads, int8_activations=int8_activations, kv_f16=True)
    self.config = self.rt.config
    tokenizer = RuntimeText(self.rt) if tokenizer is None else tokenizer
    if tokenizer.vocab_size > int(self.config["vocab_size"]):
      raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model's "
                       f"vocab_size is {self.config['vocab_size']}")
    super().__init__(tokenizer, max_seq_len=int(self.config["max_seq_len"]), **kw)
    self.path, self.check_every = path, check_every

  def describe(self) -> str:
    c = self.config
    return (f"{c['name']} on the native runtime ({self.rt.kernel} kernels), {c['n_layers']} "
            f"layers, vocab {c['vocab_size']}")

  def score(self, items: Sequence[scoring.Item]) -> List[scoring.Score]:
    out = []
    for i, it in enumerate(items):
      if not len(it.inputs) == len(it.targets) == len(it.mask):
        raise ValueError(f"score: item {i} has inputs/targets/mask of lengths "
                         f"{len(it.inputs)}/{len(it.targets)}/{len(it.mask)}")
      if len(it.inputs) > self.max_len:
        raise ValueError(f"score: item {i} has {len(it.inputs)} tokens > {self.max_len}")
      logits = np.asarray(self.rt.logits([int(t) for t in it.inputs]), np.float64)
      m = np.asarray(it.mask, bool)
      tgt = np.asarray(it.targets, np.int64)
      top = logits.max(axis=1)
      lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
      picked = logits[np.arange(len(tgt)), tgt] - lse
      greedy = np.argmax(logits, axis=1) == tgt
      out.append(scoring.Score(float(picked[m].sum()), bool(greedy[m].all()), int(m.sum())))
    return out

  def generate(self, rows, until, max_new, temperature, top_p, seed, offset) -> List[str]:
    n, vocab = len(rows), int(self.config["vocab_size"])
    states = [self.rt.new_state(len(r) + max_new) for r in rows]
    logits = np.asarray(self.rt.prefill_batch(states, [list(map(int, r)) for r in rows]))
    temp = np.full(n, temperature, np.float32)
    top_p_rows = np.full(n, top_p, np.float32)
    top_k = np.zeros(n, np.int32)
    seeds = np.array([row_seed(seed, offset + j) for j in range(n)], np.uint32)
    no_mask = np.full((n, 1), -1, np.int32)
    no_force = np.full(n, -1, np.int32)
    eos = self.tokenizer.eos_id
    new: List[List[int]] = [[] for _ in range(n)]
    texts = [""] * n
    live = list(range(n))
    for step in range(max_new):
      toks = native_sampling.sample_rows(logits, temp, top_k, top_p_rows, seeds,
                                         np.full(n, step, np.int32), no_mask, no_force,
                                         rows=live)
      for j in live:
        new[j].append(int(toks[j]))
      if (step + 1) % self.check_every == 0 or step + 1 == max_new:
        live = [j for j in live if not self._finish(j, new[j], eos, until, texts)]
      if not live or step + 1 == max_new:
        break
      self.rt.decode_batch([states[j] for j in live], [int(toks[j]) for j in live],
                           out=logits, rows=live)
    return texts

  def _finish(self, j: int, ids: List[int], eos, until, texts: List[str]) -> bool:
    """Decodes row j's new tokens into texts[j] (cut at EOS and the first stop string);
    True when the row is finished."""
    done = eos is not None and eos in ids
    if done:
      ids = ids[:ids.index(eos)]
    text = self.tokenizer.decode(ids)
    cut = gen_lib.cut_at_stop(text, until)
    texts[j] = text if cut is None else cut
    return done or cut is not None
