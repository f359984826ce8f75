"""The GGUF we write, run by llama.cpp: SmolLM2-135M-Instruct exported to our int4 `.gnb`
(`nano_int4`) and written as a llama-architecture Q4_0 GGUF (`gguf_writer`, what
`nano_int4 --format=gguf` does) is loaded by llama.cpp, and llama.cpp's greedy continuation of a
chat prompt equals our runtime's on the same file (int8 activations per 32-block, as llama.cpp
quantises them for Q4_0).

llama.cpp is llama-cpp-python in its own venv, never the repo's lock (install:
csrc/runtime/bench.py's docstring). Without it this test skips and says where it looked; CI
does not install it, so there it always skips."""

import json
import os
import subprocess

import pytest

from csrc.runtime import _runtime
from gemini.checkpoints import gguf
from gemini.export import gguf_writer, nano_int4

CANDIDATES = ("/tmp/llamavenv/bin/python", "/tmp/llamavenv2/bin/python")
PROMPT = "What is the capital of France? Answer in one sentence."
NEW_TOKENS = 32


def _llama_python():
  """The first Python that imports llama_cpp: $LLAMA_PYTHON, then CANDIDATES; None if none."""
  for py in ([os.environ["LLAMA_PYTHON"]] if os.environ.get("LLAMA_PYTHON") else []) + list(CANDIDATES):
    if os.path.exists(py) and subprocess.run([py, "-c", "import llama_cpp"],
                                             capture_output=True).returncode == 0:
      return py
  return None


def _llama_greedy(py, model, ids):
  """llama.cpp's greedy tokens after `ids` (bench_llama.py); without its extra buffer types if
  the default path dies (its AMX Q4_0 path crashes on some CPUs)."""
  script = os.path.join(os.path.dirname(__file__), "bench_llama.py")
  cmd = [py, script, model, "1", ",".join(map(str, ids)), str(NEW_TOKENS)]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode < 0:
    out = subprocess.run(cmd + ["plain"], capture_output=True, text=True)
  assert out.returncode == 0, f"llama.cpp failed on {model}: {out.stderr[-2000:]}"
  return json.loads(out.stdout.strip().splitlines()[-1])["tokens"]


def test_llama_cpp_greedy_equals_ours_on_our_q4_0_gguf(tmp_path):
  py = _llama_python()
  if py is None:
    pytest.skip("llama-cpp-python not found ($LLAMA_PYTHON, " + ", ".join(CANDIDATES) +
                "): the llama.cpp round trip is not checked here")
  gnb_path, q40 = str(tmp_path / "smollm2.gnb"), str(tmp_path / "smollm2.q4_0.gguf")
  nano_int4.export_gguf("smollm2", gnb_path, 32, "float16")
  gguf_writer.write_from_gnb(gnb_path, q40, gguf_writer.Q4_0)
  rt = _runtime.Runtime(q40, 1, "auto", True, True)
  ids = rt.encode(rt.config["chat_template"].format(prompt=PROMPT))
  ours = list(rt.generate(ids, NEW_TOKENS))
  theirs = _llama_greedy(py, q40, ids)
  def text(toks):
    return rt.decode(toks).decode("utf-8", "replace")
  assert theirs == ours, (f"llama.cpp {theirs}\nours      {ours}\n"
                          f"llama.cpp: {text(theirs)!r}\nours: {text(ours)!r}")
  assert "Paris" in text(ours), text(ours)
