"""The two backends behind one face: `submit(Request)`, `tokenizer`, `model_id`, `stop()`.

- JaxBackend: the JAX model under the continuous-batching Scheduler (any parameter tree:
  a trained checkpoint, an imported GGUF, random weights for tests).
- NativeBackend: the int4 C++ runtime (`csrc/runtime` through its pybind module). The module
  exposes whole-sequence `generate` (prefill + sampling loop in C++, GIL released) and no
  per-step or batched session, so requests run one at a time on a worker thread and their
  text arrives when the C++ loop returns; token masks (JSON constraints) and thinking budgets
  need per-step control and are refused on this backend.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional

from gemini.serve import engine as engine_lib
from gemini.serve import request as request_lib
from gemini.serve import scheduler as scheduler_lib


class JaxBackend:
  supports_control = True

  def __init__(self, params, cfg, tokenizer, ecfg: engine_lib.EngineConfig, *, model_id: str,
               metrics=None, max_queue: int = 64, warmup: bool = True):
    self.cfg, self.tokenizer, self.model_id = cfg, tokenizer, model_id
    self.engine = engine_lib.Engine(params, cfg, ecfg)
    self.scheduler = scheduler_lib.Scheduler(self.engine, tokenizer, max_queue=max_queue,
                                             metrics=metrics, warmup=warmup)
    self.vision = cfg.vision.enabled
    self.audio = cfg.audio.enabled
    self.max_len = ecfg.max_len

  def submit(self, req: request_lib.Request):
    self.scheduler.submit(req)

  def check_fits(self, req: request_lib.Request):
    self.scheduler.check_fits(req)

  def stats(self) -> dict:
    s = self.engine.prefix_cache.stats
    return {"backend": "jax", "running": self.scheduler.running(),
            "queued": self.scheduler.queued(), "steps": self.scheduler.steps,
            "prefix_cache": {"lookups": s.lookups, "hits": s.hits,
                             "tokens_saved": s.tokens_saved}}

  def stop(self):
    self.scheduler.stop()


class NativeTokenizer:
  """The runtime's own tokenizer (SentencePiece or byte-level BPE stored in the .gnb)."""

  def __init__(self, rt, base: Optional[object] = None):
    self.rt = rt
    c = rt.config
    self.vocab_size = int(c["vocab_size"])
    self.eos_ids = frozenset({int(c["eos_id"])} | (set(base.eos_ids) if base else set()))
    self.bos_id = int(c["bos_id"]) if c.get("add_bos") else None
    self.think_open = self.think_close = None
    self._base = base

  def encode(self, text):
    return list(self.rt.encode(text))

  def decode(self, ids):
    return self.rt.decode([int(i) for i in ids]).decode("utf-8", "replace")

  def render_chat(self, messages, add_generation_prompt=True):
    if self._base is not None:
      return self._base.render_chat(messages, add_generation_prompt)
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(out) + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class NativeBackend:
  supports_control = False
  vision = audio = False

  def __init__(self, path: str, *, threads: int = 2, model_id: str, tokenizer=None,
               max_queue: int = 64, metrics=None):
    from csrc.runtime import _runtime
    self.rt = _runtime.Runtime(path, threads)
    self.tokenizer = NativeTokenizer(self.rt, tokenizer)
    self.model_id, self.metrics, self.max_queue = model_id, metrics, max_queue
    self.max_len = int(self.rt.config["max_seq_len"])
    self.queue: "queue.Queue" = queue.Queue()
    self.stopping = threading.Event()
    self.served = 0
    self.thread = threading.Thread(target=self._loop, name="serve-native", daemon=True)
    self.thread.start()

  def check_fits(self, req):
    need = len(req.tokens) + req.params.max_tokens
    if need > self.max_len:
      raise ValueError(f"prompt of {len(req.tokens)} tokens + max_tokens {req.params.max_tokens} "
                       f"> the model's max_seq_len {self.max_len}")
    if req.params.constraint is not None or req.params.thinking_budget != 0:
      raise ValueError("structured output, tool-call constraints and thinking need per-token "
                       "control, which the native runtime's Python module does not expose; "
                       "serve with the jax backend")

  def submit(self, req):
    self.check_fits(req)
    if self.queue.qsize() >= self.max_queue:
      raise scheduler_lib.QueueFull(f"queue is full ({self.max_queue} waiting)")
    self.queue.put(req)

  def _loop(self):
    while not self.stopping.is_set():
      try:
        req = self.queue.get(timeout=0.1)
      except queue.Empty:
        continue
      tr = request_lib.Tracker(req, self.tokenizer)
      try:
        if req.cancelled.is_set():
          tr._finish("cancelled")
          continue
        p = req.params
        out = self.rt.generate(req.tokens, p.max_tokens, p.temperature, p.top_k, p.top_p,
                               p.seed % (1 << 64), True)
        for t in out:
          tr.on_token(int(t))
          if tr.finished:
            break
        if not tr.finished:
          tr._flush_answer(final=True)
          tr._finish("length")
      except Exception as e:  # Bad token ids, cache overflow: the request fails, the loop lives.
        if not tr.finished:
          tr.fail(f"{type(e).__name__}: {e}")
      self.served += 1
      if self.metrics is not None:
        self.metrics.finished(tr)

  def stats(self):
    return {"backend": "native", "queued": self.queue.qsize(), "served": self.served}

  def stop(self):
    self.stopping.set()
    self.thread.join(timeout=30)
