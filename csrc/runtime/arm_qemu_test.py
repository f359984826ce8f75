"""The aarch64 build under qemu: the runtime cross-compiled with Debian's g++-aarch64-linux-gnu
(NEON + sdot kernels, -march=armv8.2-a+dotprod, static) runs the golden tiny Nano under
qemu-aarch64 and gives the JAX int4 path's logits and greedy tokens (f32 parity path), and
the NEON int8 path stays as close to JAX as the x86 ones. Speed is not measured: under
emulation it means nothing. Skipped, naming the missing tool, where the cross toolchain or
qemu is not installed (tools/apt-packages.txt lists them)."""

import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from gemini.config import ModelConfig
from gemini.export import export
from gemini.quant import test_util
from gemini.quant.test_util import random_params

NANO = ModelConfig(name="nano_arm", vocab_size=384, d_model=96, n_layers=2, n_heads=4,
                   n_kv_heads=2, head_dim=24, d_ff=160, max_seq_len=256, activation="gelu")
SOURCES = ["csrc/runtime/" + f for f in (
    "kernels.cc", "kernels_neon.cc", "kernels_avx2.cc", "kernels_avxvnni.cc", "kernels_avx512.cc",
    "kernels_amx.cc",
    "model.cc", "thread_pool.cc", "gnb.cc", "gnb_config.cc", "gnb_json.cc", "gnb_spec.cc",
    "gnb_tokenizer.cc", "generate.cc", "sampler.cc", "parity_main.cc")] + [
    "csrc/common/crc32c.cc", "csrc/common/mapped_file.cc"]
CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"


def _root():
  here = os.path.dirname(os.path.abspath(__file__))
  return os.path.dirname(os.path.dirname(here))


@pytest.fixture(scope="module")
def arm_binary(tmp_path_factory):
  for tool in (CXX, QEMU):
    if shutil.which(tool) is None:
      pytest.skip(f"SKIPPED aarch64: {tool} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")
  out = str(tmp_path_factory.mktemp("arm") / "parity_main")
  root = _root()
  cmd = [CXX, "-std=c++17", "-O2", "-march=armv8.2-a+dotprod", "-static", "-I" + root,
         *[os.path.join(root, s) for s in SOURCES], "-o", out, "-lpthread"]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return out


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  params = random_params(NANO, jax.random.key(0))
  path = str(tmp_path_factory.mktemp("gnb") / "nano.gnb")
  return path, export.export(path, params, NANO, group_size=32, eos_id=-1)


def _run(binary, path, prompt, n, *flags):
  r = subprocess.run([QEMU, binary, path, ",".join(map(str, prompt)), str(n), *flags],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  return out, np.asarray(out["logits"], np.float32).reshape(len(prompt), NANO.vocab_size)


def test_golden_parity_and_greedy_under_qemu(arm_binary, golden):
  path, q = golden
  prompt = [int(t) for t in np.random.default_rng(1).integers(0, NANO.vocab_size, 32)]
  want = np.asarray(test_util.logits(q, prompt, NANO))
  want_tokens = test_util.greedy(q, prompt, NANO, 16)
  scale = np.max(np.abs(want))
  for kernel in ("scalar", "neon"):
    out, got = _run(arm_binary, path, prompt, 16, f"--kernel={kernel}", "--acts=f32", "--kv=f32", "--threads=2")
    assert out["kernel"] == kernel
    assert np.max(np.abs(got - want)) / scale <= 1e-3, kernel
    assert out["tokens"] == want_tokens, kernel
  out, got = _run(arm_binary, path, prompt, 16, "--kernel=neon", "--acts=int8", "--kv=f16")
  assert np.max(np.abs(got - want)) / scale <= 0.06
  assert np.mean(np.abs(got - want)) / np.std(want) <= 0.03
  assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9
