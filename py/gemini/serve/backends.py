"""The two backends behind one face: `submit(Request)`, `tokenizer`, `model_id`, `stop()`.

- JaxBackend: the JAX model under the continuous-batching Scheduler (any parameter tree:
  a trained checkpoint, an imported GGUF, random weights for tests).
- NativeBackend: the int4 C++ runtime (`csrc/runtime` through its pybind module) under the
  same Scheduler via `native_engine.NativeEngine`: continuous batching with one batched decode
  step in C++ for all running sequences, chunked prefill, the prefix cache as sequence-state
  copies, NumPy sampling with token masks (JSON constraints, tool calls, thinking budgets). No
  JAX runs on its hot path.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Sequence

from gemini.serve import engine as engine_lib
from gemini.serve import native_engine
from gemini.serve import request as request_lib
from gemini.serve import scheduler as scheduler_lib
from gemini.serve import tokenizer as tokenizer_lib


class JaxBackend:
  supports_control = True

  def __init__(self, params, cfg, tokenizer, ecfg: engine_lib.EngineConfig, *, model_id: str,
               metrics=None, max_queue: int = 64, warmup: bool = True, mesh=None):
    self.cfg, self.tokenizer, self.model_id = cfg, tokenizer, model_id
    self.engine = engine_lib.Engine(params, cfg, ecfg, mesh=mesh)
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


class NativeTokenizer(tokenizer_lib.ServeTokenizer):
  """The byte-level BPE stored in a .gnb or GGUF (the runtime's own encode/decode, one token's
  bytes = decode of that id alone), for files served without a Python-side tokenizer. Specials are the tokens whose text looks like `<...>` and
  encodes back to that one id; the chat format follows the file's template (ChatML or the
  reports' turn format)."""

  _SPECIAL = re.compile(rb"^<[|/A-Za-z_][^<>\s]*>$")

  def __init__(self, rt):
    self.rt = rt
    c = rt.config
    self.vocab_size = int(c["vocab_size"])
    self.bos_id = int(c["bos_id"]) if c.get("add_bos") else None
    self._bytes = [bytes(rt.decode([i])) for i in range(self.vocab_size)]
    self._specials = {b.decode(): i for i, b in enumerate(self._bytes)
                      if self._SPECIAL.match(b) and list(rt.encode(b.decode())) == [i]}
    ends = {int(c["eos_id"])} if int(c["eos_id"]) >= 0 else set()
    ends |= {self._specials[s] for s in ("<|im_end|>", "<end_of_turn>") if s in self._specials}
    self.eos_ids = frozenset(ends)
    self.think_open = self._specials.get("<think>")
    self.think_close = self._specials.get("</think>")
    if self.think_open is None or self.think_close is None:
      self.think_open = self.think_close = None
    self.turns = "<start_of_turn>" in self._specials and "<|im_start|>" not in self._specials
    # The file's one-turn template may carry a default system turn (SmolLM2's does).
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", str(c.get("chat_template", "")),
                      re.S)
    self._system = found.group(1) if found else ""

  def special_ids(self):
    return set(self._specials.values())

  def encode(self, text: str) -> List[int]:
    return list(self.rt.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(self.rt.decode([int(i) for i in ids])).decode("utf-8", "replace")

  def token_bytes(self) -> List[bytes]:
    return list(self._bytes)

  def render_chat(self, messages, add_generation_prompt=True) -> str:
    if self.turns:
      out = [f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n"
             f"{m['content']}<end_of_turn>\n" for m in messages]
      return "".join(out) + ("<start_of_turn>model\n" if add_generation_prompt else "")
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if self._system and (not messages or messages[0]["role"] != "system"):
      out.insert(0, f"<|im_start|>system\n{self._system}<|im_end|>\n")
    return "".join(out) + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class NativeBackend:
  """A .gnb or llama GGUF served by the C++ runtime (see the module docstring). `tokenizer`:
  a ServeTokenizer over the same vocabulary (SmolLM2's GGUF BPE, a model's spm.model), else
  the file's own (NativeTokenizer). int8 activations and an f16 KV cache unless told."""

  supports_control = True
  vision = audio = False

  def __init__(self, path: str, *, threads: int = 2, model_id: str, tokenizer=None,
               ecfg: Optional[native_engine.NativeConfig] = None, max_queue: int = 64,
               metrics=None, int8_activations: bool = True, kv_f16: bool = True):
    from csrc.runtime import _runtime
    self.rt = _runtime.Runtime(path, threads, int8_activations=int8_activations, kv_f16=kv_f16)
    self.tokenizer = tokenizer if tokenizer is not None else NativeTokenizer(self.rt)
    if self.tokenizer.vocab_size != int(self.rt.config["vocab_size"]):
      raise ValueError(f"{path}: the tokenizer has {self.tokenizer.vocab_size} tokens, the "
                       f"model's vocab_size is {self.rt.config['vocab_size']}")
    self.model_id = model_id
    limit = int(self.rt.config["max_seq_len"])
    ecfg = ecfg or native_engine.NativeConfig()
    ecfg = dataclasses.replace(ecfg, max_len=min(ecfg.max_len, limit))
    self.engine = native_engine.NativeEngine(self.rt, ecfg, kv_f16=kv_f16)
    self.scheduler = scheduler_lib.Scheduler(self.engine, self.tokenizer, max_queue=max_queue,
                                             metrics=metrics, name="native",
                                             prefill_chunks=ecfg.prefill_chunks)
    self.max_len = ecfg.max_len

  def submit(self, req: request_lib.Request):
    self.scheduler.submit(req)

  def check_fits(self, req: request_lib.Request):
    self.scheduler.check_fits(req)

  def stats(self) -> dict:
    s = self.engine.prefix_cache.stats
    return {"backend": "native", "kernel": self.rt.kernel, "running": self.scheduler.running(),
            "queued": self.scheduler.queued(), "steps": self.scheduler.steps,
            "prefix_cache": {"lookups": s.lookups, "hits": s.hits,
                             "tokens_saved": s.tokens_saved}}

  def stop(self):
    self.scheduler.stop()
