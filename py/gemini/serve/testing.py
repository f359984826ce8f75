"""Test helpers: a tiny random model with a small SentencePiece vocabulary (as JAX params or
an int4 .gnb for the native runtime), and a uvicorn server on 127.0.0.1 in a background
thread."""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import threading
import time

import jax
import numpy as np

from gemini.config import AudioConfig, VisionConfig, get_config
from gemini.data import tokenizer as sp_tokenizer
from gemini.export import export, gnb
from gemini.model import multimodal, transformer
from gemini.serve import app as app_lib
from gemini.serve import backends, engine, metrics as metrics_lib
from gemini.serve import tokenizer as tokenizer_lib


def train_small_tokenizer(out_dir: str, vocab_size: int = 600) -> str:
  """A SentencePiece model with the fixed specials, trained on a few stdlib modules (~seconds)."""
  path = os.path.join(out_dir, "spm.model")
  if os.path.exists(path):
    return path
  files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "json", "*.py")))
  texts = [open(f, encoding="utf-8").read() for f in files]
  texts.append("The capital of France is Paris. Hello world! What is the weather like? " * 20)
  return sp_tokenizer.train(texts, out_dir, vocab_size=vocab_size, max_sentences=5000)


def tiny_cfg(vocab_size: int, **kw):
  base = dataclasses.replace(get_config("nano_tiny"), name="serve_tiny", vocab_size=vocab_size,
                             n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, head_dim=32,
                             d_ff=128, max_seq_len=512)
  return dataclasses.replace(base, **kw)


def tiny_mm_cfg(vocab_size: int, **kw):
  """tiny_cfg with small vision (16x16 images, 4 tokens per image, 2 per video frame) and
  audio (25 tokens per second) encoders, f32."""
  vision = VisionConfig(enabled=True, image_size=16, patch_size=8, channels=3, d_model=32,
                        n_layers=1, n_heads=2, d_ff=64, tokens_per_image=4, tokens_per_frame=2)
  audio = AudioConfig(enabled=True, n_mels=16, d_model=32, n_layers=1, n_heads=2, d_ff=64)
  return tiny_cfg(vocab_size, name="serve_tiny_mm", vision=vision, audio=audio,
                  dtype="float32", **kw)


def tiny_backend(tmp_dir: str, *, n_slots: int = 4, max_len: int = 384, seed: int = 0,
                 metrics=None, prefix_entries: int = 32, multimodal: bool = False):
  tok = tokenizer_lib.SentencePieceTokenizer(train_small_tokenizer(tmp_dir))
  cfg = (tiny_mm_cfg if multimodal else tiny_cfg)(tok.vocab_size)
  params = transformer.init_params(cfg, jax.random.key(seed))
  ecfg = engine.EngineConfig(n_slots=n_slots, max_len=max_len, chunk=32,
                             chunk_buckets=(8, 16, 32), prefix_entries=prefix_entries)
  return backends.JaxBackend(params, cfg, tok, ecfg, model_id="tiny", metrics=metrics)


def tiny_gnb(tmp_dir: str, seed: int = 0):
  """(path, tokenizer) of the tiny random model exported to an int4 .gnb with the small
  SentencePiece vocabulary inside (what `--gnb` serves through the native runtime)."""
  path = os.path.join(tmp_dir, f"tiny{seed}.gnb")
  sp = train_small_tokenizer(tmp_dir)
  tok = tokenizer_lib.SentencePieceTokenizer(sp)
  if not os.path.exists(path):
    cfg = tiny_cfg(tok.vocab_size)
    params = jax.tree.map(np.asarray, transformer.init_params(cfg, jax.random.key(seed)))
    export.export(path, params, cfg, group_size=32, tokenizer_kind=gnb.TOK_SENTENCEPIECE,
                  tokenizer=open(sp, "rb").read(), bos_id=tok.bos_id, eos_id=min(tok.eos_ids))
  return path, tok


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerThread:
  """uvicorn serving `app` on 127.0.0.1:<free port> until stop()."""

  def __init__(self, app, port: int = 0):
    import uvicorn
    self.port = port or free_port()
    self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                log_level="warning", lifespan="off"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.monotonic() + 30
    while not self.server.started:
      if time.monotonic() > deadline or not self.thread.is_alive():
        raise RuntimeError("uvicorn did not start")
      time.sleep(0.02)
    self.url = f"http://127.0.0.1:{self.port}"

  def stop(self):
    self.server.should_exit = True
    self.thread.join(timeout=10)


def serve_tiny(tmp_dir: str, server_cfg: app_lib.ServerConfig = None, **kw):
  """(backend, ServerThread) for the tiny model."""
  m = metrics_lib.Metrics()
  be = tiny_backend(tmp_dir, metrics=m, **kw)
  cfg = server_cfg or app_lib.ServerConfig(model_id="tiny")
  return be, ServerThread(app_lib.create_app(be, cfg, metrics=m))


def serve_tiny_mm(tmp_dir: str, server_cfg: app_lib.ServerConfig = None, **kw):
  """(backend, ServerThread) for the tiny multimodal model (see tiny_mm_cfg)."""
  return serve_tiny(tmp_dir, server_cfg, multimodal=True, **kw)


_jit_forward = jax.jit(transformer.forward, static_argnames=("cfg",))


def forward_logits(params, cfg, ids, layout, seq_len: int = 0):
  """Reference next-token logits f32 [V] of a (media) prompt: transformer.forward over
  multimodal.build_batch of ids split at the layout's media starts, right-padded to seq_len
  (padding is segment 0 and after the last token, so causal attention never sees it; one
  compile serves a growing sequence)."""
  example, at = [], 0
  for start, kind, arr in layout:
    example += [("text", ids[at:start]), (kind, arr)]
    at = start + multimodal.num_tokens(kind, np.shape(arr), cfg)
  example.append(("text", ids[at:]))
  b = multimodal.build_batch([example], cfg, max(seq_len, len(ids)))
  logits, _ = _jit_forward(params, {k: v for k, v in b.items()
                                    if k not in ("targets", "loss_mask")}, cfg=cfg)
  return np.asarray(logits[0, len(ids) - 1])


def forward_greedy(params, cfg, ids, layout, n: int, eos_ids=()):
  """Reference greedy continuation of a (media) prompt (argmax of forward_logits)."""
  seq, out = list(ids), []
  for _ in range(n):
    t = int(np.argmax(forward_logits(params, cfg, seq, layout, len(ids) + n)))
    if t in eos_ids:
      break
    out.append(t)
    seq.append(t)
  return out


# Schemas and checks shared by the API tests (the openai / google-genai client tests of both
# backends): a structured-output schema with its validator, and a tool declaration.
PERSON_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                            "maxItems": 3}}}


def check_person(obj):
  """Asserts obj satisfies PERSON_SCHEMA."""
  assert set(obj) == {"name", "age", "tags"}
  assert isinstance(obj["name"], str) and len(obj["name"]) <= 12
  assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 120
  assert isinstance(obj["tags"], list) and len(obj["tags"]) <= 3
  assert all(t in ("a", "b") for t in obj["tags"])


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "current weather of a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                  "unit": {"type": "string", "enum": ["C", "F"]}}}}}
