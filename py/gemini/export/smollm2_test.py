"""The real model on device: SmolLM2-135M-Instruct (GGUF import) exported to int4 and run by
the C++ runtime answers the chat prompt with the JAX int4 path's greedy tokens, and the C++
byte-level BPE gives `tokenizers`' ids."""

import os
import subprocess

import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.export import gnb, nano_int4
from gemini.quant import test_util

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("smol") / "smollm2.gnb")
  model, q = nano_int4.export_gguf("smollm2", path, 32, "float16")
  return path, model, q


def test_file_is_valid_and_int4_sized(smollm2):
  path, model, _ = smollm2
  f = gnb.read(path, check_data=False)
  assert f.config["vocab_size"] == 49152 and f.config["n_layers"] == 30
  assert f.tokenizer_kind == gnb.TOK_BPE
  # ~135M weights at 4.5 bits (+f32 norms) -> about 76 MB; far below f32's 540 MB.
  assert 60e6 < os.path.getsize(path) < 90e6


@pytest.mark.parametrize("text", [
    "Hello world, it's 2024! 3.14159 naïve café 東京 🙂  spaces   \n\n tabs\t end ",
    "I'll we've they're DON'T x'y 'sup <|im_start|>user\nhi<|im_end|>",
    "a\n\n\nb  c\r\n d  ",
])
def test_cpp_bpe_matches_tokenizers(smollm2, text):
  path, model, _ = smollm2
  rt = _runtime.Runtime(path)
  ids = model.tokenizer.encode(text).ids
  assert rt.encode(text) == ids
  assert rt.decode(ids).decode() == model.tokenizer.decode(ids, skip_special_tokens=False)


def test_chat_answer_matches_jax_int4_greedy(smollm2):
  path, model, q = smollm2
  rt = _runtime.Runtime(path, threads=2)
  prompt_text = rt.config["chat_template"].replace("{prompt}", QUESTION)
  prompt = rt.encode(prompt_text)
  assert prompt == model.tokenizer.encode(prompt_text).ids
  want = test_util.greedy(q, prompt, model.cfg, 24, eos_id=model.eos_id)
  got = rt.generate(prompt, 24, stop_at_eos=True)
  assert got == want
  answer = rt.decode(got).decode()
  print("SmolLM2 int4 answer:", answer)
  assert "Paris" in answer


def test_nano_run_cli_chat(smollm2):
  path, _, _ = smollm2
  here = os.path.dirname(os.path.abspath(__file__))
  binary = None
  for cand in (os.path.join(here, "..", "..", "..", "csrc", "runtime", "nano_run"),
               os.path.join("bazel-bin", "csrc", "runtime", "nano_run")):
    if os.path.exists(cand):
      binary = cand
  if binary is None:
    pytest.skip("nano_run not built")
  out = subprocess.run([binary, "--model", path, "--prompt", QUESTION, "--chat",
                        "--max_tokens", "24", "--threads", "2"], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert "Paris" in out.stdout, out.stdout
