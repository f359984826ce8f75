"""Serving throughput: aggregate tokens/s at 1, 4, 8, 16 concurrent streams for both backends,
next to sequential generation measured in the same run.

  tools/bazel run //py/gemini/serve:bench [-- --quick] [-- --out=/tmp/serve-bench]

Model: SmolLM2-135M-Instruct (its GGUF for the JAX backend, an int4 .gnb exported from it for
the native runtime); `--quick` uses a tiny random model for the JAX rows only. Sequential
baselines: `gemini.model.decode.generate` one prompt at a time (JAX) and the runtime's own
`generate` one prompt at a time (native). Streams go through each backend's scheduler (no
HTTP), every stream a different prompt and `--tokens` new tokens (greedy, no early stop).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app as absl_app
from absl import flags

from gemini.model import decode
from gemini.serve import backends, engine, loading
from gemini.serve import request as request_lib

_QUICK = flags.DEFINE_bool("quick", False, "tiny random model, JAX backend only")
_TOKENS = flags.DEFINE_integer("tokens", 32, "new tokens per stream")
_STREAMS = flags.DEFINE_list("streams", ["1", "4", "8", "16"], "concurrency levels")
_OUT = flags.DEFINE_string("out", "/tmp/serve-bench", "folder for bench.jsonl and bench.png")
_THREADS = flags.DEFINE_integer("threads", 2, "native runtime threads")


def cpu_line() -> str:
  model, flags_ = platform.processor() or "?", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model in ("?", ""):
          model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags_ = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  isa = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "neon") if x in flags_]
  return f"CPU: {model}; {os.cpu_count()} cores; ISA: {' '.join(isa) or 'baseline'}"


def prompts(tok, n: int):
  topics = ["the sea", "a city", "music", "rain", "a cat", "the moon", "bread", "trains",
            "winter", "a garden", "clocks", "rivers", "a library", "mountains", "fire", "birds"]
  return [tok.encode(tok.render_chat([{"role": "user", "content": f"Write about {topics[i % 16]}."}]))
          for i in range(n)]


def run_streams(backend, token_lists, max_tokens: int) -> float:
  """Submits all prompts at once; -> aggregate generated tokens / wall seconds."""
  finished, counts = threading.Event(), []
  lock = threading.Lock()

  def emit(ev):                        # runs on the engine thread: never block here
    if ev.kind == "done":
      with lock:
        counts.append(ev.usage["completion_tokens"])
        if len(counts) == len(token_lists):
          finished.set()

  t0 = time.perf_counter()
  for toks in token_lists:
    p = request_lib.GenParams(max_tokens=max_tokens, temperature=0.0)
    backend.submit(request_lib.Request(toks, p, emit))
  finished.wait()
  return sum(counts) / (time.perf_counter() - t0)


class _NoStop:
  """Tokenizer view with no stop ids, so every stream generates exactly max_tokens."""

  def __init__(self, tok):
    self._tok = tok
    self.eos_ids = frozenset()

  def __getattr__(self, name):
    return getattr(self._tok, name)


def jax_rows(params, cfg, tok, levels, n_tokens, log):
  rows = []
  plist = prompts(tok, max(levels))
  max_len = 128
  for p in plist[:4]:                                                # compile outside timing
    decode.generate(params, jnp.asarray([p]), cfg, 1, max_len=max_len)
  seq_tokens, t0 = 0, time.perf_counter()
  for p in plist[:4]:
    out = decode.generate(params, jnp.asarray([p]), cfg, n_tokens, max_len=max_len)
    jax.block_until_ready(out)
    seq_tokens += n_tokens
  seq = seq_tokens / (time.perf_counter() - t0)
  log({"backend": "jax", "streams": "sequential", "tok_s": seq})
  for n in levels:
    ecfg = engine.EngineConfig(n_slots=n, max_len=max_len, chunk=64, chunk_buckets=(16, 32, 64),
                               prefix_entries=0)
    be = backends.JaxBackend(params, cfg, _NoStop(tok), ecfg, model_id="bench")
    try:
      run_streams(be, plist[:n], 2)                                  # warm the scheduler path
      rate = run_streams(be, plist[:n], n_tokens)
    finally:
      be.stop()
    rows.append(rate)
    log({"backend": "jax", "streams": n, "tok_s": rate, "vs_sequential": rate / seq})
  return seq, rows


def native_rows(gnb_path, tok, levels, n_tokens, log, threads):
  be = backends.NativeBackend(gnb_path, threads=threads, model_id="bench")
  be.tokenizer.eos_ids = frozenset()
  try:
    plist = prompts(tok, max(levels))
    be.rt.generate(plist[0], 2)
    t0 = time.perf_counter()
    for p in plist[:4]:
      be.rt.generate(p, n_tokens)
    seq = 4 * n_tokens / (time.perf_counter() - t0)
    log({"backend": "native", "streams": "sequential", "tok_s": seq})
    rows = []
    for n in levels:
      rate = run_streams(be, plist[:n], n_tokens)
      rows.append(rate)
      log({"backend": "native", "streams": n, "tok_s": rate, "vs_sequential": rate / seq})
  finally:
    be.stop()
  return seq, rows


def main(argv):
  del argv
  levels = [int(s) for s in _STREAMS.value]
  os.makedirs(_OUT.value, exist_ok=True)
  jsonl = open(os.path.join(_OUT.value, "bench.jsonl"), "w")
  print(cpu_line(), flush=True)

  def log(row):
    jsonl.write(json.dumps(row) + "\n")
    jsonl.flush()
    extra = f"  ({row['vs_sequential']:.2f}x sequential)" if "vs_sequential" in row else ""
    print(f"{row['backend']:>6}  streams={row['streams']!s:>10}  {row['tok_s']:8.1f} tok/s{extra}",
          flush=True)

  results = {}
  if _QUICK.value:
    from gemini.serve import testing
    tmp = tempfile.mkdtemp()
    tok = loading.tokenizer_lib.SentencePieceTokenizer(testing.train_small_tokenizer(tmp))
    cfg = testing.tiny_cfg(tok.vocab_size)
    from gemini.model import transformer
    params = transformer.init_params(cfg, jax.random.key(0))
    results["jax (tiny)"] = jax_rows(params, cfg, tok, levels, _TOKENS.value, log)
  else:
    params, cfg, tok = loading.load_gguf("smollm2")
    print(f"model: SmolLM2-135M-Instruct ({cfg.n_layers} layers, d={cfg.d_model}), "
          f"{_TOKENS.value} new tokens per stream", flush=True)
    results["jax f32"] = jax_rows(params, cfg, tok, levels, _TOKENS.value, log)
    del params
    from gemini.export import nano_int4
    path = os.path.join(_OUT.value, "smollm2.gnb")
    if not os.path.exists(path):
      nano_int4.export_gguf("smollm2", path, 32, "float16")
    results["native int4"] = native_rows(path, tok, levels, _TOKENS.value, log, _THREADS.value)
  jsonl.close()
  _plot(results, levels, os.path.join(_OUT.value, "bench.png"))
  print(f"wrote {_OUT.value}/bench.jsonl and bench.png")


def _plot(results, levels, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, (seq, rows) in results.items():
    line = ax.plot(levels, rows, marker="o", label=f"{name} streams")[0]
    ax.axhline(seq, ls="--", color=line.get_color(), label=f"{name} sequential")
  ax.set_xlabel("concurrent streams")
  ax.set_ylabel("aggregate tokens/s")
  ax.set_xticks(levels)
  ax.legend(fontsize=8)
  ax.set_title(cpu_line()[:70], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  absl_app.run(main)
