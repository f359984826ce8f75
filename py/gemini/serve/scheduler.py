"""Continuous batching on one background thread over an engine of the JetStream shape
(`engine.Engine` for JAX, `native_engine.NativeEngine` for the C++ runtime).

Each loop turn: admit queued requests while a slot is free, up to `prefill_chunks` prefill
chunks per turn so a long prompt never stalls the running streams for more than that. An engine
with `batch_prefill` set prefills every text prompt waiting for a free slot together (each
chunk one forward over several prompts' next tokens); otherwise prompts are prefilled one at
a time. Then one generate step for all slots; every active slot's token goes through its
Tracker, finished or cancelled requests leave their slot at once. The queue is bounded: `submit` raises QueueFull
(the HTTP layer answers 429 with Retry-After).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Dict, Optional

import numpy as np

from gemini.serve import engine as engine_lib
from gemini.serve import request as request_lib

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
  pass


@dataclasses.dataclass
class _Member:
  req: request_lib.Request
  tracker: request_lib.Tracker
  slot: int


@dataclasses.dataclass
class _Prefilling:
  members: list                   # [_Member], in the order of the results `steps` returns
  steps: object                   # generator; returns [Prefix | ValueError] per member


def _alone(steps):
  """A one-prompt prefill generator in the batched form (a list of one result)."""
  try:
    prefix = yield from steps
  except ValueError as e:
    return [e]
  return [prefix]


class Scheduler:
  """Owns an Engine's decode state; `submit` is thread-safe."""

  def __init__(self, eng: engine_lib.Engine, tokenizer, *, max_queue: int = 64, metrics=None,
               name: str = "jax", warmup: bool = False, prefill_chunks: int = 1):
    self.eng, self.tok, self.metrics, self.name = eng, tokenizer, metrics, name
    self.max_queue = max_queue
    self.prefill_chunks = prefill_chunks     # prefill calls per turn before the decode step
    n = eng.ecfg.n_slots
    self.free = list(range(n))
    self.active: Dict[int, request_lib.Tracker] = {}
    self.queue: "collections.deque[request_lib.Request]" = collections.deque()
    self.prefilling: Optional[_Prefilling] = None
    self.lock = threading.Lock()
    self.wake = threading.Event()
    self.stopping = threading.Event()
    self.state = eng.init_state()
    if warmup:
      self.state = eng.warmup(self.state)
    self.controls = engine_lib.Controls.idle(n, eng.vocab)
    self.steps = 0
    self.generated = 0
    self.thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
    self.thread.start()

  # -- public -----------------------------------------------------------------------------

  def submit(self, req: request_lib.Request) -> None:
    """Queues a request (its prompt must fit: see check_fits)."""
    self.check_fits(req)
    with self.lock:
      if len(self.queue) >= self.max_queue:
        raise QueueFull(f"queue is full ({self.max_queue} waiting)")
      self.queue.append(req)
    self._gauge()
    self.wake.set()

  def check_fits(self, req: request_lib.Request) -> None:
    """ValueError naming the sizes if prompt + output cannot fit a slot's cache."""
    p = req.params
    think = 0 if p.thinking_budget == 0 else (
        request_lib.DYNAMIC_THINKING_CAP if p.thinking_budget < 0 else p.thinking_budget) + 2
    need = self.eng.cache_positions(len(req.tokens) + 1) + p.max_tokens + think
    if need > self.eng.ecfg.max_len:
      raise ValueError(f"prompt of {len(req.tokens)} tokens + max_tokens {p.max_tokens}"
                       + (f" + thinking {think}" if think else "")
                       + f" needs {need} cache positions; this server has {self.eng.ecfg.max_len}")

  def stop(self):
    self.stopping.set()
    self.wake.set()
    self.thread.join(timeout=30)

  def running(self) -> int:
    return len(self.active)

  def queued(self) -> int:
    return len(self.queue) + (len(self.prefilling.members) if self.prefilling else 0)

  # -- loop -------------------------------------------------------------------------------

  def _loop(self):
    while not self.stopping.is_set():
      try:
        busy = self._turn()
      except Exception as e:  # A bug in one turn must not kill the server: fail the requests.
        log.exception("engine turn failed")
        self._fail_all(f"engine error: {type(e).__name__}: {e}")
        busy = False
      if not busy:
        self.wake.wait(0.05)
        self.wake.clear()

  def _turn(self) -> bool:
    busy = False
    for _ in range(self.prefill_chunks):
      if self.prefilling is None:
        self._start_prefill()
      if self.prefilling is None:
        break
      busy = True
      self._prefill_chunk()
    if self.active:
      busy = True
      self._step()
    return busy

  def _start_prefill(self):
    batched = getattr(self.eng, "batch_prefill", False)
    members, media = [], ()
    with self.lock:
      while self.queue and self.free:
        req = self.queue[0]
        if req.media and members:
          break                   # a media prompt is prefilled on its own, next time
        self.queue.popleft()
        if req.cancelled.is_set():
          req.emit(request_lib.Event("done", finish_reason="cancelled",
                                     usage={"prompt_tokens": len(req.tokens), "completion_tokens": 0,
                                            "thought_tokens": 0, "cached_tokens": 0}))
          continue
        members.append(_Member(req, request_lib.Tracker(req, self.tok), self.free.pop()))
        if req.media or not batched:
          media = req.media
          break
    if members:
      prompts = [m.req.tokens + m.tracker.prompt_suffix() for m in members]
      if media:
        steps = _alone(self.eng.prefill_steps(self.eng.params, prompts[0], media))
      elif batched:
        steps = self.eng.prefill_batch_steps(self.eng.params, prompts)
      else:
        steps = _alone(self.eng.prefill_steps(self.eng.params, prompts[0]))
      self.prefilling = _Prefilling(members, steps)
    self._gauge()

  def _prefill_chunk(self):
    job = self.prefilling
    if all(m.req.cancelled.is_set() for m in job.members):
      job.steps.close()
      results = [_Cancelled()] * len(job.members)
    else:
      try:
        next(job.steps)
        return
      except StopIteration as done:
        results = done.value
      except ValueError as e:     # a refusal the engine raised for the whole batch
        results = [e] * len(job.members)
    self.prefilling = None
    for m, prefix in zip(job.members, results):
      if isinstance(prefix, ValueError):
        m.tracker.fail(str(prefix))
        self._release(m.slot)
        continue
      if isinstance(prefix, _Cancelled) or m.req.cancelled.is_set():
        m.tracker._finish("cancelled")
        self._release(m.slot)
        continue
      m.req.cached_tokens = prefix.cached
      if self.metrics is not None:
        self.metrics.prefill(prefix.length, prefix.cached)
      self.state = self.eng.insert(prefix, self.state, m.slot)
      self.active[m.slot] = m.tracker
      self._set_controls(m.slot, m.tracker)

  def _set_controls(self, slot, tr: request_lib.Tracker):
    c, p = self.controls, tr.req.params
    c.temperature[slot] = p.temperature
    c.top_k[slot] = p.top_k
    c.top_p[slot] = p.top_p
    c.seeds[slot] = np.uint32(p.seed % (1 << 32))
    c.counters[slot] = tr.count
    c.forced[slot] = tr.forced
    m = tr.mask()
    c.mask_bits[slot] = -1 if m is None else m

  def _next_controls(self, slot, tr: request_lib.Tracker):
    """What changes between a request's tokens: its counter, forced token and (thinking, a
    constraint or banned ids) its mask; the rest was set when it joined."""
    c = self.controls
    c.counters[slot] = tr.count
    c.forced[slot] = tr.forced
    if tr.masked:
      m = tr.mask()
      c.mask_bits[slot] = -1 if m is None else m

  def _step(self):
    t0 = time.monotonic()
    self.state, tokens = self.eng.generate(self.eng.params, self.state, self.controls)
    self.steps += 1
    for slot, tr in list(self.active.items()):
      try:
        if tr.req.cancelled.is_set():
          tr._finish("cancelled")
        else:
          tr.on_token(int(tokens[slot]))
          self.generated += 1
      except Exception as e:
        log.exception("request failed")
        tr.fail(f"{type(e).__name__}: {e}")
      if tr.finished:
        del self.active[slot]
        self._release(slot)
        if self.metrics is not None:
          self.metrics.finished(tr)
      else:
        self._next_controls(slot, tr)
    if self.metrics is not None:
      self.metrics.step(len(tokens), time.monotonic() - t0, len(self.active))

  def _release(self, slot):
    self.state = self.eng.release(self.state, slot)
    self.controls.temperature[slot] = 0
    self.controls.forced[slot] = -1
    self.controls.mask_bits[slot] = -1
    with self.lock:
      self.free.append(slot)
    self._gauge()

  def _gauge(self):
    if self.metrics is not None:
      self.metrics.gauges(self.queued(), self.running())

  def _fail_all(self, message):
    for slot, tr in list(self.active.items()):
      tr.fail(message)
      del self.active[slot]
      self._release(slot)
    if self.prefilling is not None:
      for m in self.prefilling.members:
        m.tracker.fail(message)
        self._release(m.slot)
      self.prefilling = None
    self.state = self.eng.init_state()


class _Cancelled(Exception):
  pass
