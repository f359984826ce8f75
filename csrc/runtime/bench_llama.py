"""llama.cpp's side of //csrc/runtime:bench, run with a Python that has llama-cpp-python (a
separate venv; never the repo's lock):

  python3 -m venv /tmp/llamavenv
  CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llamavenv/bin/pip install llama-cpp-python   # builds llama.cpp from its sdist, minutes

  /tmp/llamavenv/bin/python bench_llama.py MODEL.gguf THREADS PROMPT_IDS DECODE_TOKENS [plain]

`plain`: without llama.cpp's extra buffer types (its weight repacking, e.g. the AMX buffer,
whose Q4_0 path crashes on some builds); the CPU backend's own kernels only.

Prints one JSON line: prefill and decode tokens/s and the greedy tokens, so a caller can both
time llama.cpp and compare its greedy continuation with ours.
"""

import json
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def _last_logits(llm):
  """The last evaluated token's logits (llama_get_logits: the context's output row)."""
  ptr = llama_cpp.llama_get_logits(llm._ctx.ctx)  # pylint: disable=protected-access
  return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def main(argv):
  path, threads, ids, n_decode = argv[1], int(argv[2]), [int(x) for x in argv[3].split(",")], int(argv[4])
  if len(argv) > 5 and argv[5] == "plain":
    default = llama_cpp.llama_cpp.llama_model_default_params

    def plain():
      p = default()
      p.use_extra_bufts = False
      return p
    llama_cpp.llama_cpp.llama_model_default_params = plain  # the module Llama() reads it from
  llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
              n_batch=512, verbose=False)
  llm.reset()
  llm.eval(ids[:1])  # warm-up: page in the weights
  llm.reset()
  t0 = time.perf_counter()
  llm.eval(ids)
  t1 = time.perf_counter()
  out = []
  for _ in range(n_decode):
    tok = int(np.argmax(_last_logits(llm)))
    out.append(tok)
    llm.eval([tok])
  t2 = time.perf_counter()
  print(json.dumps({"prefill_tps": len(ids) / (t1 - t0), "decode_tps": n_decode / (t2 - t1),
                    "tokens": out}))


if __name__ == "__main__":
  main(sys.argv)
