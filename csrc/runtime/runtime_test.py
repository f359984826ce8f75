"""The C++ runtime against the JAX int4 path: kernels, golden logits/greedy tokens, the file
reader's refusals (truncation, bit flips, wrong version, a randomised mutation fuzz), sampling."""

import os
import struct
import subprocess

import jax
import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.config import ModelConfig
from gemini.export import export, gnb
from gemini.quant import int4, test_util
from gemini.quant.test_util import random_params

# A tiny Nano: MQA (1 kv head), gelu, tied embeddings; d_model not a multiple of 128 so
# group 128 pads K.
NANO = ModelConfig(name="nano_golden", vocab_size=384, d_model=96, n_layers=2, n_heads=4,
                   n_kv_heads=1, head_dim=24, d_ff=160, max_seq_len=256, activation="gelu")


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  params = random_params(NANO, jax.random.key(0))
  path = str(tmp_path_factory.mktemp("gnb") / "nano.gnb")
  q = export.export(path, params, NANO, group_size=32, eos_id=-1)
  return path, q


def _kernels():
  return _runtime.available_kernels()


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("t", [1, 5])
def test_int4_kernels_match_numpy(group, scale_dtype, t):
  rng = np.random.default_rng(group + t)
  k, n = 200, 19  # K ragged against every group size.
  w = rng.standard_normal((k, n)).astype(np.float32)
  qw = int4.quantize(w, group, scale_dtype)
  tensor = gnb.int4_tensor("w", qw)
  q, s = gnb.int4_from_tensor(tensor)
  np.testing.assert_array_equal(q, int4.int4_values(qw).T)  # file layout round-trips
  deq = q * np.repeat(s, group, axis=1)[:, :k]                # [N, K]
  x = rng.standard_normal((t, k)).astype(np.float32)
  want = x.astype(np.float64) @ deq.T.astype(np.float64)
  for kernel in _kernels():
    got = _runtime.int4_matvec(tensor.data, n, k, group, scale_dtype == "bfloat16", x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=kernel)


def test_python_and_cpp_read_the_same_file(golden):
  path, q = golden
  with open(path, "rb") as f:
    data = f.read()
  cfg, names = _runtime.parse_bytes(data, path)
  parsed = gnb.decode(data, path)
  assert cfg == parsed.config  # same JSON keys and values through both parsers
  assert names == list(parsed.tensors)
  assert names[0] == "embed" and names[-1] == "final_norm"
  # Every int4 tensor holds exactly the JAX int4 tree's values and scales.
  qe, se = gnb.int4_from_tensor(parsed.tensors["embed"])
  np.testing.assert_array_equal(qe, int4.int4_values(q["embed"]["tokens"]).T)
  np.testing.assert_array_equal(se, np.asarray(q["embed"]["tokens"].scales, np.float32)[:se.shape[1]].T)
  qd, _ = gnb.int4_from_tensor(parsed.tensors["layers.1.w_down"])
  w_down_1 = jax.tree.map(lambda a: a[1], q["blocks"][0]["mlp"]["w_down"])   # layer 1
  np.testing.assert_array_equal(qd, int4.int4_values(w_down_1).T)
  # Both readers check 64-byte alignment; verify it independently here.
  assert all(data.find(t.data) % gnb.ALIGN == 0 for t in [parsed.tensors["final_norm"]])


def test_golden_logits_and_greedy_tokens(golden):
  """The f32-activation, f32-KV path is the parity path: logits within 1e-3 of JAX int4 and
  the same 64 greedy tokens, for every kernel and 1/2 threads."""
  path, q = golden
  prompt = [int(t) for t in np.random.default_rng(1).integers(0, NANO.vocab_size, 64)]
  want = np.asarray(test_util.logits(q, prompt, NANO))
  want_tokens = test_util.greedy(q, prompt, NANO, 64)
  for kernel in _kernels():
    for threads in (1, 2):
      rt = _runtime.Runtime(path, threads=threads, kernel=kernel, int8_activations=False, kv_f16=False)
      got = rt.logits(prompt)
      assert got.shape == (64, NANO.vocab_size)
      rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
      assert rel <= 1e-3, (kernel, threads, rel)
      tokens = rt.generate(prompt, 64)
      assert tokens == want_tokens, (kernel, threads)


def test_fast_paths_stay_close_to_jax(golden):
  """f16 KV and int8 activations (the defaults) against JAX int4, for every kernel. (Kernel-level
  equality with the scalar path is kernels_test's; through a model, rounding activations to int8
  turns last-bit differences of summation order into different int8 values now and then.)"""
  path, q = golden
  prompt = [int(t) for t in np.random.default_rng(2).integers(0, NANO.vocab_size, 48)]
  want = np.asarray(test_util.logits(q, prompt, NANO))
  scale = np.max(np.abs(want))
  f16 = _runtime.Runtime(path, kernel="scalar", int8_activations=False, kv_f16=True).logits(prompt)
  assert np.max(np.abs(f16 - want)) / scale <= 2e-3
  ref = _runtime.Runtime(path, kernel="scalar", int8_activations=True, kv_f16=True).logits(prompt)
  rel = np.max(np.abs(ref - want)) / scale
  # Mean |error| over the logits, relative to their spread: the int8 rounding of activations.
  mean_rel = np.mean(np.abs(ref - want)) / np.std(want)
  print(f"int8 activations vs JAX: max rel {rel:.4f}, mean/std {mean_rel:.4f}")
  assert rel <= 0.06 and mean_rel <= 0.03, (rel, mean_rel)
  agree = np.mean(np.argmax(ref, -1) == np.argmax(want, -1))
  assert agree >= 0.9, agree
  for kernel in _kernels()[1:]:
    for threads in (1, 2):
      got = _runtime.Runtime(path, threads=threads, kernel=kernel, int8_activations=True,
                             kv_f16=True).logits(prompt)
      assert np.max(np.abs(got - want)) / scale <= 0.06, (kernel, threads)
      assert np.mean(np.abs(got - want)) / np.std(want) <= 0.03, (kernel, threads)
      assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9, (kernel, threads)


def _mutated(data: bytes, offset: int, value: int) -> bytes:
  b = bytearray(data)
  b[offset] = value
  return bytes(b)


def test_bad_files_are_refused_with_named_reasons(golden):
  path, _ = golden
  with open(path, "rb") as f:
    data = f.read()
  header_bytes = struct.unpack_from("<I", data, 12)[0]
  cases = {
      "truncated": (data[:len(data) - 100], "truncated"),
      "tiny": (data[:20], "shorter than the 48-byte header"),
      "magic": (b"NOTAGNB!" + data[8:], "magic"),
      "version": (data[:8] + struct.pack("<I", 2) + data[12:], "version=2"),
      "header bit flip": (_mutated(data, 60, data[60] ^ 0x10), "header CRC-32C mismatch"),
      "data bit flip": (_mutated(data, len(data) - 5, data[len(data) - 5] ^ 0x01),
                        "data CRC-32C mismatch"),
  }
  for name, (blob, msg) in cases.items():
    with pytest.raises(ValueError, match=msg):
      _runtime.parse_bytes(blob, "f.gnb")
    with pytest.raises(ValueError, match=msg.split("=")[0]):
      gnb.decode(blob, "f.gnb")
  assert header_bytes < len(data)
  # The message names the file.
  with pytest.raises(ValueError, match=r"^f\.gnb: version=2"):
    _runtime.parse_bytes(cases["version"][0], "f.gnb")


def _refix_header_crc(b: bytearray) -> None:
  hb = struct.unpack_from("<I", b, 12)[0]
  if 52 <= hb <= len(b):
    from gemini import crc32c
    struct.pack_into("<I", b, hb - 4, crc32c.crc32c(bytes(b[:hb - 4])))


def test_fuzz_header_and_table_parser(golden):
  """Random byte mutations of the header/table (CRC re-fixed half the time so the parser
  behind the checksum is exercised): every outcome is a clean accept or a ValueError."""
  path, _ = golden
  with open(path, "rb") as f:
    data = f.read()
  hb = struct.unpack_from("<I", data, 12)[0]
  rng = np.random.default_rng(7)
  outcomes = {"ok": 0, "refused": 0}
  for i in range(1500):
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
      pos = int(rng.integers(0, hb))
      b[pos] = int(rng.integers(0, 256)) if rng.random() < 0.5 else b[pos] ^ (1 << int(rng.integers(0, 8)))
    if rng.random() < 0.2:
      b = b[:int(rng.integers(0, len(b)))]
    if i % 2:
      _refix_header_crc(b)
    try:
      _runtime.parse_bytes(bytes(b), "fuzz.gnb")
      outcomes["ok"] += 1
    except ValueError as e:
      assert str(e).startswith("fuzz.gnb: "), str(e)
      outcomes["refused"] += 1
  assert outcomes["refused"] > 500, outcomes


def test_sampling_matches_reference_distribution():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal(50).astype(np.float32) * 2
  for temp, top_k, top_p in [(1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.8), (1.0, 5, 0.5)]:
    z = logits.astype(np.float64) / temp
    order = np.argsort(-z, kind="stable")
    keep = order[:top_k] if top_k else order
    p = np.exp(z[keep] - z[keep].max())
    p /= p.sum()
    n = int(np.searchsorted(np.cumsum(p), top_p) + 1)
    want = np.zeros(50)
    want[keep[:n]] = p[:n] / p[:n].sum()
    got = np.asarray(_runtime.sample_probabilities(logits, temp, top_k, top_p))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    draws = _runtime.sample(logits, temp, top_k, top_p, 11, 4000)
    assert set(draws) <= set(np.flatnonzero(want))
    freq = np.bincount(draws, minlength=50) / 4000
    assert np.max(np.abs(freq - want)) < 0.04
    assert draws == _runtime.sample(logits, temp, top_k, top_p, 11, 4000)  # seeded
  assert _runtime.sample(logits, 0.0, 0, 1.0, 0, 3) == [int(np.argmax(logits))] * 3


def _nano_run():
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (os.path.join(here, "nano_run"), os.path.join("bazel-bin", "csrc", "runtime", "nano_run")):
    if os.path.exists(cand):
      return cand
  pytest.skip("nano_run binary not built")


def test_cli_generates_and_refuses(golden, tmp_path):
  path, q = golden
  binary = _nano_run()
  prompt = [5, 17, 33, 2, 99]
  out = subprocess.run([binary, "--model", path, "--prompt_ids", ",".join(map(str, prompt)),
                        "--max_tokens", "12", "--threads", "2"], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  ids = [int(x) for x in out.stdout.split("output_ids:")[1].split("\n")[0].split()]
  assert ids == test_util.greedy(q, prompt, NANO, 12)
  bad = tmp_path / "bad.gnb"
  with open(path, "rb") as f:
    bad.write_bytes(f.read()[:1000])
  out = subprocess.run([binary, "--model", str(bad), "--prompt_ids", "1"], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 1 and "truncated" in out.stderr and str(bad) in out.stderr


def _np_forward(f: gnb.GnbFile, tokens):
  """NumPy float64 reference of the runtime's forward on a .gnb's dequantised weights: RMSNorm,
  per-head q/k RMSNorm when qk_norm (PROTOCOL: before RoPE), rotate-half RoPE, causal GQA,
  gelu-tanh gated MLP, tied logits."""
  c, T = f.config, f.tensors

  def mat(name):
    q, s = gnb.int4_from_tensor(T[name])
    g = T[name].group_size
    return q * np.repeat(s.astype(np.float64), g, axis=1)[:, :q.shape[1]]

  vec = lambda name: np.frombuffer(T[name].data, np.float32).astype(np.float64)
  eps = c["norm_eps"]
  rms = lambda x, s: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * s
  H, K, Dh, t = c["n_heads"], c["n_kv_heads"], c["head_dim"], len(tokens)
  half = Dh // 2
  inv = np.asarray([np.float32(c["rope_base"] ** (-2.0 * i / Dh)) for i in range(half)], np.float32)
  ang = (np.arange(t, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
  cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

  def rope(x):
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

  emb = mat("embed")
  x = emb[tokens]
  for i in range(c["n_layers"]):
    p = f"layers.{i}."
    h = rms(x, vec(p + "attn_norm"))
    q = (h @ mat(p + "wq").T).reshape(t, H, Dh)
    k = (h @ mat(p + "wk").T).reshape(t, K, Dh)
    v = (h @ mat(p + "wv").T).reshape(t, K, Dh)
    if c.get("qk_norm"):
      q, k = rms(q, vec(p + "q_norm")), rms(k, vec(p + "k_norm"))
    q, k = rope(q), rope(k)
    kk, vv = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)
    s = np.einsum("thd,shd->hts", q, kk) / np.sqrt(Dh)
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    pr = np.exp(s - s.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", pr, vv).reshape(t, H * Dh)
    x = x + o @ mat(p + "wo").T
    h = rms(x, vec(p + "mlp_norm"))
    g = h @ mat(p + "w_gate").T
    g = 0.5 * g * (1 + np.tanh(0.7978845608028654 * (g + 0.044715 * g ** 3)))
    x = x + (g * (h @ mat(p + "w_up").T)) @ mat(p + "w_down").T
  return rms(x, vec("final_norm")) @ emb.T


def test_qk_norm_matches_numpy_reference(golden, tmp_path):
  """A qk_norm file (the golden model plus q_norm/k_norm scales): the runtime normalises each
  q/k head before RoPE; checked against the NumPy reference, which itself matches the runtime
  on the plain file."""
  path, _ = golden
  with open(path, "rb") as fh:
    base = gnb.decode(fh.read(), path)
  prompt = [int(t) for t in np.random.default_rng(4).integers(0, NANO.vocab_size, 20)]
  plain = _runtime.Runtime(path).logits(prompt)
  ref = _np_forward(base, prompt)
  np.testing.assert_allclose(plain, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
  rng = np.random.default_rng(5)
  tensors = []
  for t in base.tensors.values():
    tensors.append(t)
    if t.name.endswith(".attn_norm"):
      i = t.name.split(".")[1]
      for nm in ("q_norm", "k_norm"):
        tensors.append(gnb.f32_tensor(f"layers.{i}.{nm}", 1 + 0.5 * rng.standard_normal(NANO.head_dim)))
  config = dict(base.config, qk_norm=True)
  qk_path = str(tmp_path / "qk.gnb")
  with open(qk_path, "wb") as fh:
    fh.write(gnb.encode(config, base.tokenizer_kind, base.tokenizer, tensors))
  with open(qk_path, "rb") as fh:
    qk = gnb.decode(fh.read(), qk_path)
  want = _np_forward(qk, prompt)
  for kernel in _kernels():
    got = _runtime.Runtime(qk_path, kernel=kernel).logits(prompt)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=kernel)
  assert np.max(np.abs(want - ref)) > 0.05 * np.abs(ref).max()  # the norms change the output
