"""//csrc/runtime:step_bench — the batched decode step (`Runtime.decode_batch`) alone, per batch
size, in wall time and in process CPU time (the figure that holds on a shared machine).

  tools/bazel run //csrc/runtime:step_bench [-- --batches=1,2,4,8,16 --threads=1,2 --steps=16]

Model: SmolLM2-135M-Instruct as the int4 .gnb the serving bench uses (exported from the PyPI
GGUF into --gnb when absent), int8 activations, f16 KV, the serving bench's chat prompts (~40
tokens each) prefilled first. Per (threads, kernel, B): `--steps` decode steps after one
warm-up step; the median step over --rounds rounds, interleaved (round i of every
configuration, then round i+1) so a passing load hits all alike. Prints the CPU, ISA, load.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from csrc.runtime import _runtime

_GNB = flags.DEFINE_string("gnb", "/tmp/serve-bench/smollm2.gnb", "the .gnb (exported if absent)")
_BATCHES = flags.DEFINE_list("batches", ["1", "2", "4", "8", "16"], "batch sizes")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "runtime threads")
_KERNELS = flags.DEFINE_list("kernels", ["auto"], "kernel names (Runtime(kernel=...))")
_STEPS = flags.DEFINE_integer("steps", 16, "timed decode steps per round")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "interleaved rounds (median reported)")

_TOPICS = ["the sea", "a city", "music", "rain", "a cat", "the moon", "bread", "trains",
           "winter", "a garden", "clocks", "rivers", "a library", "mountains", "fire", "birds"]


def ensure_gnb(path: str) -> str:
  if not os.path.exists(path):
    from gemini.export import nano_int4  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    nano_int4.export_gguf("smollm2", path, 32, "float16")
  return path


def prompts(rt, n: int):
  """The serving bench's chat prompts (its prompt_texts: SmolLM2's ChatML with its default
  system turn), tokenised by the file's BPE."""
  system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
  return [rt.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWrite about "
                    f"{_TOPICS[i % 16]}.<|im_end|>\n<|im_start|>assistant\n") for i in range(n)]


def one_round(rt, plist, b: int, steps: int):
  """(wall ms, process-CPU ms) per decode step of b sequences."""
  states = [rt.new_state(max_len=256) for _ in range(b)]
  for st, p in zip(states, plist):
    rt.prefill(st, p)
  toks = [p[-1] for p in plist[:b]]
  rt.decode_batch(states, toks)  # warm-up: scratch buffers grow once
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(steps):
    rt.decode_batch(states, toks)
  return (1e3 * (time.perf_counter() - t0) / steps, 1e3 * (time.process_time() - c0) / steps)


def main(argv):
  del argv
  path = ensure_gnb(_GNB.value)
  batches = [int(b) for b in _BATCHES.value]
  print(f"CPU: {_runtime.cpu_description()}; kernels {_runtime.available_kernels()}; "
        f"module {_runtime.__file__}", flush=True)
  print("load average: %.2f %.2f %.2f (before)" % os.getloadavg(), flush=True)
  runtimes = {(int(t), k): _runtime.Runtime(path, threads=int(t), kernel=k, int8_activations=True,
                                            kv_f16=True)
              for t in _THREADS.value for k in _KERNELS.value}
  plist = prompts(next(iter(runtimes.values())), max(batches))
  times = {(key, b): [] for key in runtimes for b in batches}
  for _ in range(_ROUNDS.value):
    for key, rt in runtimes.items():
      for b in batches:
        times[(key, b)].append(one_round(rt, plist, b, _STEPS.value))
  print(f"prompts {min(map(len, plist))}-{max(map(len, plist))} tokens; median of "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps", flush=True)
  for (threads, kernel), _ in runtimes.items():
    base_cpu = None
    for b in batches:
      wall = statistics.median(w for w, _ in times[((threads, kernel), b)])
      cpu = statistics.median(c for _, c in times[((threads, kernel), b)])
      base_cpu = cpu if base_cpu is None else base_cpu
      print(f"threads={threads} kernel={kernel:>7} B={b:>2}: wall {wall:6.2f} ms/step "
            f"({1e3 * b / wall:7.1f} tok/s), CPU {cpu:6.2f} ms/step ({1e3 * b / cpu:7.1f} tok/s "
            f"per CPU-s, {cpu / base_cpu:4.2f}x B={batches[0]})", flush=True)
  print("load average: %.2f %.2f %.2f (after)" % os.getloadavg(), flush=True)


if __name__ == "__main__":
  app.run(main)
