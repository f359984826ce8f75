"""Test helpers for the distillation and post-training stages: a tiny random teacher on a
byte vocabulary (so tests need neither the 135M teacher nor its tokenizer)."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp

from gemini.config import get_config
from gemini.distill import teacher as teacher_lib
from gemini.distill import teacher_targets
from gemini.model import transformer

VOCAB = 260          # 256 bytes + separator + spare


class ByteTokenizer:
  """UTF-8 bytes as token ids (stands in for the teacher's BPE in tests)."""

  def encode(self, text):
    return types.SimpleNamespace(ids=list(text.encode("utf-8")))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

  def token_to_id(self, tok):
    return None


def tiny_teacher(seed=0):
  cfg = get_config("nano_tiny").replace(name="tiny_teacher", vocab_size=VOCAB, d_model=32,
                                        n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                                        d_ff=64, max_seq_len=64, dtype="float32")
  params = transformer.init_params(cfg, jax.random.key(seed))
  # Sharper than the init so that top-k differs visibly from the full distribution.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, params)
  return teacher_lib.Teacher(cfg=cfg, params=params, tokenizer=ByteTokenizer(), bos_id=256,
                             eos_id=256, doc_sep_id=256, chat_template="")


def targets_args(out, **kw):
  a = teacher_targets.parse_args([f"--out={out}", "--seq_len=16", "--train_windows=12",
                                  "--heldout_windows=4", "--k=16", "--draws=8", "--batch=4",
                                  "--windows_per_shard=5", "--max_bytes_per_source=20000"])
  for k, v in kw.items():
    setattr(a, k, v)
  return a


def last_logged_step(metrics_path):
  """Highest step in a metrics.jsonl (0 if none; a torn last line is ignored)."""
  if not os.path.exists(metrics_path):
    return 0
  best = 0
  with open(metrics_path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "event" not in r and "step" in r:
        best = max(best, int(r["step"]))
  return best


def kill_then_resume(cmd, workdir, kill_at, env, timeout=300):
  """Starts `cmd`, SIGKILLs it once `workdir/metrics.jsonl` shows step >= kill_at, runs it
  again to completion. Returns (step it was killed at, stdout of the resumed run)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while last_logged_step(metrics) < kill_at:
    if proc.poll() is not None:
      raise AssertionError(f"{cmd} exited (rc {proc.returncode}) before it could be killed")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"{cmd} did not reach step {kill_at} in {timeout}s")
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed = last_logged_step(metrics)
  out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=timeout)
  return killed, out.stdout


def subprocess_env():
  """Environment for running a stage's module in a subprocess from a test."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
  env.pop("XLA_FLAGS", None)
  return env


class ChatBytes(ByteTokenizer):
  """ByteTokenizer with the ChatML turn specials as ids 257/258."""

  def token_to_id(self, tok):
    return {"<|im_start|>": 257, "<|im_end|>": 258}.get(tok)


class ThinkBytes:
  """UTF-8 bytes as ids, with <|im_start|> 257, <|im_end|> 258, <think> 259, </think> 260
  parsed atomically; decode drops the specials (as tokenizers' decode does)."""
  SPECIALS = {"<|im_start|>": 257, "<|im_end|>": 258, "<think>": 259, "</think>": 260}
  _SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

  def encode(self, text):
    ids = []
    for piece in self._SPLIT.split(text):
      ids += [self.SPECIALS[piece]] if piece in self.SPECIALS else list(piece.encode())
    return type("Enc", (), {"ids": ids})()

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

  def token_to_id(self, tok):
    return self.SPECIALS.get(tok)
