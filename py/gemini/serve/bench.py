"""Serving throughput: aggregate tokens/s at 1, 4, 8, 16 concurrent streams for both backends,
next to sequential generation measured in the same run, and next to llama.cpp's own server.

  tools/bazel run //py/gemini/serve:bench [-- --quick] [-- --llama_python=/tmp/llamavenv/bin/python]

Model: SmolLM2-135M-Instruct: its GGUF dequantised to f32 for the JAX backend; an int4 .gnb
exported from it for the native runtime (int8 activations, f16 KV cache, as served). `--quick`:
a tiny random model for both (an int4 .gnb of the same weights for the native rows).

Rows, all greedy with no early stop (every stream generates exactly --tokens tokens):
- `sequential`: one prompt at a time with no server: `gemini.model.decode.generate` (JAX) and
  the runtime's own C++ `generate` loop (native), the baselines the ratios divide by;
- `streams=N`: N different prompts submitted at once to the backend's scheduler (no HTTP);
  wall time from the first submit to the last token, prefill included;
- `native step` / `jax step streams=N`: the batched decode step alone (the runtime's
  `decode_batch` over N prefilled sequences; the engine's compiled step on N slots): no
  scheduler, no prefill — the ceiling the streams rows approach as generations get longer;
- `http streams=N` (when --llama_python imports llama_cpp): N concurrent streaming clients of
  POST /v1/completions against our server on the native backend and against
  `python -m llama_cpp.server` on the same int4 weights written as a Q4_0 GGUF
  (gemini.export.gguf_writer, bit for bit the .gnb's weights), same threads, same prompts.

Prints the CPU model, ISA and load average (before and after); writes bench.jsonl and
bench.png under --out_dir.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import platform
import subprocess
import tempfile
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts: no accelerator probing
# pylint: disable=wrong-import-position

import httpx2
import jax
import jax.numpy as jnp
import numpy as np
from absl import app as absl_app
from absl import flags

from gemini.export import gguf_writer, nano_int4
from gemini.model import decode, transformer
from gemini.serve import app as app_lib
from gemini.serve import backends, engine, loading, native_engine, testing
from gemini.serve import request as request_lib

_QUICK = flags.DEFINE_bool("quick", False, "tiny random model (both backends)")
_TOKENS = flags.DEFINE_integer("tokens", 32, "new tokens per stream")
_STREAMS = flags.DEFINE_list("streams", ["1", "4", "8", "16"], "concurrency levels")
_BACKENDS = flags.DEFINE_list("backends", ["jax", "native"], "which backends to measure")
_OUT = flags.DEFINE_string("out_dir", "/tmp/serve-bench", "folder for bench.jsonl, bench.png, models")
_THREADS = flags.DEFINE_integer("threads", 2, "native runtime / llama.cpp threads")
_LLAMA = flags.DEFINE_string("llama_python", "/tmp/llamavenv/bin/python",
                             "a Python with llama-cpp-python[server] ('' to skip llama.cpp)")


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
  isa = [x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_tile", "neon") if x in flags_]
  return f"CPU: {model}; {os.cpu_count()} cores; ISA: {' '.join(isa) or 'baseline'}"


def load_line() -> str:
  return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def prompt_texts(tok, n: int):
  topics = ["the sea", "a city", "music", "rain", "a cat", "the moon", "bread", "trains",
            "winter", "a garden", "clocks", "rivers", "a library", "mountains", "fire", "birds"]
  return [tok.render_chat([{"role": "user", "content": f"Write about {topics[i % 16]}."}])
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
  total = sum(counts)
  if total != max_tokens * len(token_lists):
    raise RuntimeError(f"streams produced {counts}, expected {max_tokens} each")
  return total / (time.perf_counter() - t0)


class _NoStop:
  """Tokenizer view with no stop ids, so every stream generates exactly max_tokens."""

  def __init__(self, tok):
    self._tok = tok
    self.eos_ids = frozenset()

  def __getattr__(self, name):
    return getattr(self._tok, name)


def jax_rows(params, cfg, tok, levels, n_tokens, log):
  plist = [tok.encode(t) for t in prompt_texts(tok, max(levels))]
  max_len = 128
  for p in plist[:4]:                  # compile every (prompt length, n_tokens) outside timing
    jax.block_until_ready(decode.generate(params, jnp.asarray([p]), cfg, n_tokens,
                                          max_len=max_len))
  seq_tokens, t0 = 0, time.perf_counter()
  for p in plist[:4]:
    out = decode.generate(params, jnp.asarray([p]), cfg, n_tokens, max_len=max_len)
    jax.block_until_ready(out)
    seq_tokens += n_tokens
  seq = seq_tokens / (time.perf_counter() - t0)
  log({"backend": "jax", "streams": "sequential", "tok_s": seq})
  rows = []
  for n in levels:
    sizes = tuple(b for b in (1, 2, 4, 8, 16) if b <= n)   # queued prompts prefilled together
    ecfg = engine.EngineConfig(n_slots=n, max_len=max_len, chunk=64, chunk_buckets=(16, 32, 64),
                               prefix_entries=0, prefill_batch=sizes)
    be = backends.JaxBackend(params, cfg, _NoStop(tok), ecfg, model_id="bench")
    try:
      run_streams(be, plist[:n], 2)                                  # warm the scheduler path
      rate = run_streams(be, plist[:n], n_tokens)
      eng = be.engine                   # the compiled decode step alone, on a fresh state
      state, idle = eng.init_state(), engine.Controls.idle(n, eng.vocab)
      state, _ = eng.generate(eng.params, state, idle)
      t0 = time.perf_counter()
      for _ in range(4):
        state, _ = eng.generate(eng.params, state, idle)
      log({"backend": "jax step", "streams": n, "tok_s": 4 * n / (time.perf_counter() - t0)})
    finally:
      be.stop()
    rows.append(rate)
    log({"backend": "jax", "streams": n, "tok_s": rate, "vs_sequential": rate / seq})
  return seq, rows


def native_backend(path, tok, threads, n_slots):
  return backends.NativeBackend(path, threads=threads, model_id="bench",
                                tokenizer=None if tok is None else _NoStop(tok),
                                ecfg=native_engine.NativeConfig(n_slots=n_slots, max_len=512,
                                                                prefix_entries=0))


def native_rows(path, tok, levels, n_tokens, log, threads):
  be = native_backend(path, tok, threads, max(levels))
  if tok is None:
    be.tokenizer.eos_ids = frozenset()
  try:
    plist = [be.tokenizer.encode(t) for t in prompt_texts(be.tokenizer, max(levels))]
    be.rt.generate(plist[0], 2)
    t0 = time.perf_counter()
    for p in plist[:4]:
      be.rt.generate(p, n_tokens)
    seq = 4 * n_tokens / (time.perf_counter() - t0)
    log({"backend": "native", "streams": "sequential", "tok_s": seq})
    rows = []
    for n in levels:                    # the C++ batched step alone: no scheduler, no prefill
      states = [be.rt.new_state(512) for _ in range(n)]
      for st, p in zip(states, plist):
        be.rt.prefill(st, p)
      be.rt.decode_batch(states, [p[-1] for p in plist[:n]])
      t0 = time.perf_counter()
      for _ in range(8):
        be.rt.decode_batch(states, [p[-1] for p in plist[:n]])
      log({"backend": "native step", "streams": n, "tok_s": 8 * n / (time.perf_counter() - t0)})
      del states
    run_streams(be, plist[:2], 2)
    for n in levels:
      rate = run_streams(be, plist[:n], n_tokens)
      rows.append(rate)
      log({"backend": "native", "streams": n, "tok_s": rate, "vs_sequential": rate / seq})
  finally:
    be.stop()
  return seq, rows


# -- over HTTP: our server on the native backend vs llama.cpp's server ---------------------

def _http_streams(url, model, texts, n_tokens, extra) -> dict:
  """N concurrent streaming /v1/completions clients; -> tokens/s and p50 TTFT."""
  def one(text):
    body = {"model": model, "prompt": text, "max_tokens": n_tokens, "temperature": 0,
            "stream": True, **extra}
    t0, first, chunks, reason = time.perf_counter(), None, 0, None
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
      r.raise_for_status()
      for line in r.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
          continue
        ev = json.loads(line[6:])
        for c in ev.get("choices", []):
          if c.get("text"):
            chunks += 1
            first = first or time.perf_counter() - t0
          reason = c.get("finish_reason") or reason
    if reason != "length":
      raise RuntimeError(f"{url}: a stream ended with finish_reason={reason!r}, not 'length'")
    return first or 0.0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
    ttft = list(pool.map(one, texts))
  return {"tok_s": n_tokens * len(texts) / (time.perf_counter() - t0),
          "ttft_p50_ms": 1000 * float(np.median(ttft))}


def _wait_http(url, proc=None, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc is not None and proc.poll() is not None:
      raise RuntimeError(f"llama.cpp server exited with {proc.returncode}")
    try:
      if httpx2.get(url + "/v1/models", timeout=2).status_code == 200:
        return
    except httpx2.HTTPError:
      pass
    time.sleep(0.5)
  raise RuntimeError(f"{url} did not answer within {timeout} s")


def llama_available(python: str) -> bool:
  if not python or not os.path.exists(python):
    return False
  return subprocess.run([python, "-c", "import llama_cpp.server.app"],
                        capture_output=True).returncode == 0


def http_rows(gnb_path, q40_path, tok, levels, n_tokens, log, threads, python):
  texts = prompt_texts(tok, max(levels))
  results = {}
  be = native_backend(gnb_path, tok, threads, max(levels))
  srv = testing.ServerThread(app_lib.create_app(be, app_lib.ServerConfig(model_id="bench")))
  try:
    _http_streams(srv.url, "bench", texts[:1], 2, {})
    rows = []
    for n in levels:
      r = _http_streams(srv.url, "bench", texts[:n], n_tokens, {})
      rows.append(r["tok_s"])
      log({"backend": "native http", "streams": n, **r})
    results["native (http)"] = rows
  finally:
    srv.stop()
    be.stop()
  port = testing.free_port()
  cmd = [python, "-m", "llama_cpp.server", "--model", q40_path, "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--n_ctx", "4096", "--interrupt_requests", "False", "--verbose", "False"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  url = f"http://127.0.0.1:{port}"
  # EOS banned so every llama.cpp stream also runs to max_tokens.
  extra = {"logit_bias": {str(t): -100.0 for t in sorted(tok.eos_ids)}}
  try:
    _wait_http(url, proc)
    _http_streams(url, "bench", texts[:1], 2, extra)
    rows = []
    for n in levels:
      r = _http_streams(url, "bench", texts[:n], n_tokens, extra)
      rows.append(r["tok_s"])
      log({"backend": "llama.cpp http", "streams": n, **r})
    results["llama.cpp server"] = rows
  finally:
    proc.terminate()
    proc.wait(30)
  return results


def main(argv):
  del argv
  logging.getLogger("httpx2").setLevel(logging.WARNING)   # one INFO line per request otherwise
  levels = [int(s) for s in _STREAMS.value]
  os.makedirs(_OUT.value, exist_ok=True)
  jsonl = open(os.path.join(_OUT.value, "bench.jsonl"), "w")
  print(cpu_line(), flush=True)
  print(load_line() + " (before)", flush=True)

  def log(row):
    row = {**row, "load1": os.getloadavg()[0]}
    jsonl.write(json.dumps(row) + "\n")
    jsonl.flush()
    extra = f"  ({row['vs_sequential']:.2f}x sequential)" if "vs_sequential" in row else ""
    if "ttft_p50_ms" in row:
      extra = f"  (TTFT p50 {row['ttft_p50_ms']:.0f} ms)"
    print(f"{row['backend']:>15}  streams={row['streams']!s:>10}  {row['tok_s']:8.1f} tok/s{extra}"
          f"  [load {row['load1']:.1f}]", flush=True)

  series, baselines = {}, {}
  if _QUICK.value:
    tmp = tempfile.mkdtemp()
    gnb_path, tok = testing.tiny_gnb(tmp)
    cfg = testing.tiny_cfg(tok.vocab_size)
    print(f"model: tiny random ({cfg.n_layers} layers, d={cfg.d_model}), {_TOKENS.value} new "
          "tokens per stream", flush=True)
    if "jax" in _BACKENDS.value:
      params = transformer.init_params(cfg, jax.random.key(0))
      baselines["jax"], series["jax"] = jax_rows(params, cfg, tok, levels, _TOKENS.value, log)
    if "native" in _BACKENDS.value:
      baselines["native"], series["native"] = native_rows(gnb_path, tok, levels, _TOKENS.value,
                                                          log, _THREADS.value)
  else:
    gnb_path = os.path.join(_OUT.value, "smollm2.gnb")
    q40_path = os.path.join(_OUT.value, "smollm2_int4.q4_0.gguf")
    _, tok = loading.gguf_tokenizer("smollm2")
    print(f"model: SmolLM2-135M-Instruct, {_TOKENS.value} new tokens per stream", flush=True)
    if "jax" in _BACKENDS.value:
      params, cfg, tok = loading.load_gguf("smollm2")
      baselines["jax f32"], series["jax f32"] = jax_rows(params, cfg, tok, levels, _TOKENS.value,
                                                         log)
      del params
    if "native" in _BACKENDS.value:
      if not os.path.exists(gnb_path):
        nano_int4.export_gguf("smollm2", gnb_path, 32, "float16")
      baselines["native int4"], series["native int4"] = native_rows(
          gnb_path, tok, levels, _TOKENS.value, log, _THREADS.value)
      if llama_available(_LLAMA.value):
        if not os.path.exists(q40_path):
          gguf_writer.write_from_gnb(gnb_path, q40_path, gguf_writer.Q4_0)
        series.update(http_rows(gnb_path, q40_path, tok, levels, _TOKENS.value, log,
                                _THREADS.value, _LLAMA.value))
      else:
        print(f"llama.cpp: not measured ({_LLAMA.value or 'no python'} cannot import "
              "llama_cpp.server; see the serve README)", flush=True)
  print(load_line() + " (after)", flush=True)
  jsonl.close()
  _plot(series, baselines, levels, os.path.join(_OUT.value, "bench.png"))
  print(f"wrote {_OUT.value}/bench.jsonl and bench.png")


def _plot(series, baselines, levels, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, rows in series.items():
    line = ax.plot(levels, rows, marker="o", label=f"{name} streams")[0]
    if name in baselines:
      ax.axhline(baselines[name], ls="--", color=line.get_color(), label=f"{name} sequential")
  ax.set_xlabel("concurrent streams")
  ax.set_ylabel("aggregate tokens/s")
  ax.set_xticks(levels)
  ax.legend(fontsize=7)
  ax.set_title(cpu_line()[:70] + "\n" + load_line(), fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  absl_app.run(main)
