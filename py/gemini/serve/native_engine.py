"""The serving engine over the native int4 runtime (`csrc/runtime` through `_runtime`), in the
same JetStream shape as `engine.Engine`, so the one `scheduler.Scheduler` drives both:

    prefill_steps(params, tokens) -> Prefix    a prompt's sequence state + next-token logits
    insert(prefix, state, slot) -> state       the sequence into slot `slot`
    generate(params, state, controls) -> state, tokens   one token for every occupied slot
    release(state, slot) -> state              the slot's sequence dropped

The decode state is `n_slots` runtime sequence states (None where a slot is free) and each
slot's next-token logits [n_slots, V] in NumPy. One generate step samples every occupied slot
(`native_sampling`, the JAX sampler's semantics: masks, forced tokens, per-seed streams), then
runs one `decode_batch` over those sequences: the runtime reads each weight once for the whole
batch, releases the GIL while it computes and writes the new logits into the state's rows.
Prompts are prefilled `chunk` tokens at a time (the generator yields between chunks so running
streams keep decoding); prompts queued together are prefilled together (`prefill_batch_steps`:
one `prefill_batch` forward over all their chunks, ragged, each sequence its own state). There is no padding and
nothing compiles, so every cache position is a token position: the prefix cache stores a copy of
each prompt's state at its end and a later prompt sharing n of its tokens starts from a copy
truncated to n.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from gemini.serve import native_sampling, prefix_cache
from gemini.serve.engine import Prefix


@dataclasses.dataclass(frozen=True)
class NativeConfig:
  n_slots: int = 8
  max_len: int = 1024             # cache positions per sequence (prompt + output)
  chunk: int = 64                 # prefill tokens per scheduler turn
  prefix_entries: int = 8         # prompt-end state copies kept (each a full KV cache); 0 = off
  prefill_chunks: int = 4         # prefill chunks per scheduler turn (the decode stall bound)

  def __post_init__(self):
    if min(self.n_slots, self.chunk, self.prefill_chunks) < 1 or self.max_len < 2:
      raise ValueError(f"NativeConfig: n_slots={self.n_slots}, chunk={self.chunk}, "
                       f"prefill_chunks={self.prefill_chunks} must be >= 1 and "
                       f"max_len={self.max_len} >= 2")


class NativeEngine:
  """See the module docstring. `rt` is a `_runtime.Runtime`; sequence states get an f16 KV
  cache unless kv_f16=False. Not thread-safe (the scheduler's loop thread owns it)."""

  params = None                   # the weights live in the runtime
  batch_prefill = True            # the scheduler hands it every waiting prompt at once

  def __init__(self, rt, ecfg: NativeConfig = NativeConfig(), kv_f16: bool = True):
    limit = int(rt.config["max_seq_len"])
    if ecfg.max_len > limit:
      raise ValueError(f"NativeConfig.max_len={ecfg.max_len} > the model's max_seq_len {limit}")
    self.rt, self.ecfg, self.kv_f16 = rt, ecfg, kv_f16
    self.vocab = int(rt.config["vocab_size"])
    self.prefix_cache = prefix_cache.PrefixCache(ecfg.prefix_entries)

  def cache_positions(self, n: int) -> int:
    """Cache positions a prompt of n tokens occupies (no padding here)."""
    return n

  # -- the JetStream face ---------------------------------------------------------------

  def init_state(self) -> dict:
    return {"seqs": [None] * self.ecfg.n_slots,
            "logits": np.zeros((self.ecfg.n_slots, self.vocab), np.float32)}

  def warmup(self, state: dict) -> dict:
    return state                  # nothing compiles; the runtime sizes its scratch on first use

  def prefill(self, params, tokens: Sequence[int]) -> Prefix:
    steps = self.prefill_steps(params, tokens)
    while True:
      try:
        next(steps)
      except StopIteration as done:
        return done.value

  def insert(self, prefix: Prefix, state: dict, slot: int) -> dict:
    state["seqs"][slot] = prefix.row
    state["logits"][slot] = prefix.logits
    return state

  def release(self, state: dict, slot: int) -> dict:
    state["seqs"][slot] = None
    return state

  def generate(self, params, state: dict, controls) -> Tuple[dict, np.ndarray]:
    del params
    rows = [i for i, s in enumerate(state["seqs"]) if s is not None]
    tokens = native_sampling.sample_rows(
        state["logits"], controls.temperature, controls.top_k, controls.top_p, controls.seeds,
        controls.counters, controls.mask_bits, controls.forced, rows=rows)
    if rows:
      seqs = [state["seqs"][i] for i in rows]
      room = [i for i, s in zip(rows, seqs) if s.length >= self.ecfg.max_len]
      if room:
        raise ValueError(f"slots {room} reached max_len {self.ecfg.max_len}")
      # The new logits go straight into the slots' rows (no per-step array or copy in Python).
      self.rt.decode_batch(seqs, tokens[rows].tolist(), out=state["logits"], rows=rows)
    return state, tokens

  # -- chunked prefill with the prefix cache ---------------------------------------------

  def _checked(self, tokens: Sequence[int]) -> list:
    tokens = [int(t) for t in tokens]
    if not tokens:
      raise ValueError("prefill: empty prompt")
    if len(tokens) > self.ecfg.max_len:
      raise ValueError(f"prompt of {len(tokens)} tokens > max_len {self.ecfg.max_len}")
    bad = [t for t in tokens if not 0 <= t < self.vocab]
    if bad:
      raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab})")
    return tokens

  def _start(self, tokens: list):
    """The prefix cache's answer for a prompt: a whole Prefix when all of it is stored, else
    (sequence state to continue, tokens already in it)."""
    hit, reuse = self.prefix_cache.lookup(tokens)
    if hit is not None and reuse == len(tokens):
      return Prefix(hit.snapshot.copy(), hit.logits.copy(), len(tokens), len(tokens))
    if hit is not None:
      seq = hit.snapshot.copy()
      if reuse < seq.length:
        seq.truncate(reuse)
      return seq, reuse
    return self.rt.new_state(self.ecfg.max_len, kv_f16=self.kv_f16), 0

  def _done(self, tokens: list, seq, logits: np.ndarray, cached: int) -> Prefix:
    if self.prefix_cache.max_entries > 0:
      self.prefix_cache.store(tokens, seq.copy(), logits.copy(), len(tokens))
    return Prefix(seq, logits, len(tokens), cached)

  def prefill_steps(self, params, tokens: Sequence[int]) -> Iterator[None]:
    """Generator: yields between chunks; its return value is the Prefix (row = the runtime
    sequence state)."""
    del params
    tokens = self._checked(tokens)
    start = self._start(tokens)
    if isinstance(start, Prefix):
      return start
    seq, done = start
    cached, logits = done, None
    while done < len(tokens):
      part = tokens[done:done + self.ecfg.chunk]
      logits = np.asarray(self.rt.prefill(seq, part), np.float32)
      done += len(part)
      if done < len(tokens):
        yield                     # between chunks only: the last one inserts in the same turn
    return self._done(tokens, seq, logits, cached)

  def prefill_batch_steps(self, params, prompts: Sequence[Sequence[int]]) -> Iterator[None]:
    """Several prompts prefilled together. Generator: each round is one `prefill_batch` call
    (one forward, each weight read once) over the unfinished prompts' next tokens, in order,
    `chunk` tokens in all (a chunk, as a single prompt's; the scheduler runs `prefill_chunks`
    rounds a turn); yields between rounds. Returns one entry per prompt: its Prefix, or the
    ValueError that refused it. (On AVX2 a round of 64-96 rows prefills fastest: 344-359
    tokens per CPU-second on SmolLM2 against 307 for 276 rows in one forward.)"""
    del params
    results: list = [None] * len(prompts)
    jobs = []                     # [index, tokens, state, done, cached]
    for i, p in enumerate(prompts):
      try:
        tokens = self._checked(p)
      except ValueError as e:
        results[i] = e
        continue
      start = self._start(tokens)
      if isinstance(start, Prefix):
        results[i] = start
      else:
        jobs.append([i, tokens, start[0], start[1], start[1]])
    budget = self.ecfg.chunk
    logits = np.empty((len(prompts), self.vocab), np.float32)
    while jobs:
      take, parts, used = [], [], 0
      for job in jobs:
        n = min(len(job[1]) - job[3], budget - used)
        if n <= 0:
          break
        take.append(job)
        parts.append(job[1][job[3]:job[3] + n])
        used += n
      self.rt.prefill_batch([j[2] for j in take], parts, out=logits, rows=[j[0] for j in take])
      for job, part in zip(take, parts):
        job[3] += len(part)
      left = []
      for job in jobs:
        if job[3] < len(job[1]):
          left.append(job)
        else:
          results[job[0]] = self._done(job[1], job[2], logits[job[0]].copy(), job[4])
      jobs = left
      if jobs:
        yield
    return results
