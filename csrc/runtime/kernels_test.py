"""Every ISA kernel against the scalar reference, and the scalar reference against NumPy, on
ragged shapes, for every weight format (.gnb int4 / GGUF Q4_0, Q4_1, Q8_0) and both activation
paths. ISA paths this CPU (or this build's architecture) lacks are skipped by name."""

import numpy as np
import pytest

from csrc.runtime import _runtime

ISAS = ["avx2", "avxvnni", "avx512", "amx", "neon"]
SHAPES = [(1, 32, 1), (3, 64, 2), (5, 200, 3), (19, 96, 5), (8, 416, 9), (7, 1056, 4)]  # (n, k, t)


def _require(isa):
  if isa not in _runtime.available_kernels():
    pytest.skip(f"SKIPPED ISA {isa}: not available here ({_runtime.cpu_description()})")


def _pack(fmt, u, group):
  """u: unsigned values [n, kp] -> the kernels' packed row bytes."""
  n, kp = u.shape
  if fmt == "q8":
    return u.astype(np.uint8).tobytes()
  blocks = u.reshape(n, kp // 32, 2, 16).astype(np.uint8)
  return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, kp // 2).tobytes()


def _matrix(fmt, n, k, group, bf16, rng):
  """Random matrix in `fmt`: (packed, scales bytes, mins bytes|None, dense f64 [n, k])."""
  kp = -(-k // group) * group
  hi = 255 if fmt == "q8" else 15
  u = rng.integers(0, hi + 1, (n, kp))
  u[:, k:] = 0 if fmt == "q4min" else (128 if fmt == "q8" else 8)  # zero weights past k
  d = (rng.random((n, kp // group)) * 0.05 + 0.001).astype(np.float32)
  if bf16:
    bits = (d.view(np.uint32) >> 16).astype(np.uint16)
    d = (bits.astype(np.uint32) << 16).view(np.float32)
  else:
    d = d.astype(np.float16)
    bits = d.view(np.uint16)
    d = d.astype(np.float32)
  dense_d = np.repeat(d, group, axis=1).astype(np.float64)
  mins = None
  if fmt == "q4min":
    m = (rng.standard_normal((n, kp // 32)) * 0.1).astype(np.float16)
    mins = m.view(np.uint16).tobytes()
    dense = u * dense_d + np.repeat(m.astype(np.float64), 32, axis=1)
    dense[:, k:] = 0
  else:
    dense = (u - (128 if fmt == "q8" else 8)) * dense_d
  return _pack(fmt, u, group), bits.tobytes(), mins, dense[:, :k], kp


def _int8_reference(dense_rows, x, kp):
  """The int8-activation result in float64: x quantised per 32-block as the runtime does."""
  t, k = x.shape
  xp = np.zeros((t, kp), np.float32)
  xp[:, :k] = x
  q, d = _runtime.quantize_acts(xp)
  xq = q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1)
  w = np.zeros((dense_rows.shape[0], kp))
  w[:, :k] = dense_rows
  return xq @ w.T


def test_activation_quantisation_matches_numpy():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((5, 256)) * rng.random((5, 1)) * 4).astype(np.float32)
  x[1, 32:64] = 0.0  # an all-zero block
  q, d = _runtime.quantize_acts(x)
  blocks = x.reshape(5, 8, 32)
  amax = np.abs(blocks).max(axis=2)
  np.testing.assert_array_equal(d, (amax / np.float32(127)).astype(np.float32))
  inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
  want = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8).reshape(5, 256)
  np.testing.assert_array_equal(q, want)
  assert np.all(q[1, 32:64] == 0) and d[1, 1] == 0


@pytest.mark.parametrize("fmt,group,bf16", [("q4", 32, False), ("q4", 64, True), ("q4", 128, False),
                                            ("q4min", 32, False), ("q8", 32, False)])
def test_scalar_reference_matches_numpy(fmt, group, bf16):
  rng = np.random.default_rng(group + len(fmt))
  for n, k, t in SHAPES:
    packed, scales, mins, dense, kp = _matrix(fmt, n, k, group, bf16, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    for int8 in (False, True):
      got = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, group, bf16, x, "scalar", int8)
      want = _int8_reference(dense, x, kp) if int8 else x.astype(np.float64) @ dense.T
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max(),
                                 err_msg=f"{fmt} n={n} k={k} t={t} int8={int8}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,group,bf16", [("q4", 32, False), ("q4", 64, True), ("q4", 128, False),
                                            ("q4min", 32, False), ("q8", 32, False)])
def test_isa_kernel_equals_scalar(isa, fmt, group, bf16):
  _require(isa)
  rng = np.random.default_rng(7 + group)
  for n, k, t in SHAPES + [(13, 32 * 7, 17), (4, 64, 1), (6, 160, 6),
                          (37, 32 * 9, 21), (48, 1056, 33), (16, 96, 4), (35, 416, 16),
                          (33, 200, 1), (37, 32 * 9, 3)]:  # amx: tiles x 1-3 tokens, 4+
    packed, scales, mins, _, _ = _matrix(fmt, n, k, group, bf16, rng)
    x = (rng.standard_normal((t, k)) * 3).astype(np.float32)
    for int8 in (True, False):
      ref = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, group, bf16, x, "scalar", int8)
      got = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, group, bf16, x, isa, int8)
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(),
                                 err_msg=f"{isa} {fmt} n={n} k={k} t={t} int8={int8}")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "amx"])
@pytest.mark.parametrize("fmt", ["q4", "q4min", "q8"])
def test_token_result_does_not_depend_on_the_batch(isa, fmt):
  """Serving decodes sequences together: each token's row must equal, bit for bit, the row it
  gets alone or in any other group (whole 16-row tiles and the ragged rows after them)."""
  if isa != "scalar":
    _require(isa)
  rng = np.random.default_rng(23)
  for n, k in [(53, 320), (35, 416), (7, 96)]:
    packed, scales, mins, _, _ = _matrix(fmt, n, k, 32, False, rng)
    x = (rng.standard_normal((11, k)) * 3).astype(np.float32)
    full = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, 32, False, x, isa, True)
    for i0, i1 in [(0, 1), (4, 5), (10, 11), (3, 6), (1, 9)]:
      part = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, 32, False, x[i0:i1], isa, True)
      np.testing.assert_array_equal(part, full[i0:i1], err_msg=f"{isa} {fmt} n={n} k={k} rows {i0}:{i1}")


@pytest.mark.parametrize("fmt,group,bf16", [("q4", 32, False), ("q4", 64, True), ("q4min", 32, False),
                                            ("q8", 32, False)])
def test_avx512_tiles_equal_amx_bit_for_bit(fmt, group, bf16):
  """The AVX-512 tile kernel repeats the AMX kernels' arithmetic (exact integer block dots, the
  same f32 accumulation per block), so on a CPU with both their results are the same bits, for
  1-3 tokens (AMX's vector path) and 4+ (its tile unit) alike."""
  _require("avx512")
  _require("amx")
  rng = np.random.default_rng(31)
  for n, k, t in [(48, 320, 1), (53, 416, 3), (35, 96, 4), (48, 1056, 17)]:
    packed, scales, mins, _, _ = _matrix(fmt, n, k, group, bf16, rng)
    x = (rng.standard_normal((t, k)) * 3).astype(np.float32)
    a = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, group, bf16, x, "avx512", True)
    b = _runtime.quant_matmul(packed, scales, mins, fmt, n, k, group, bf16, x, "amx", True)
    np.testing.assert_array_equal(a, b, err_msg=f"{fmt} n={n} k={k} t={t}")


@pytest.mark.parametrize("isa", ISAS)
def test_isa_activation_quantisation_is_bit_identical(isa):
  _require(isa)
  rng = np.random.default_rng(9)
  x = (rng.standard_normal((7, 32 * 13)) * rng.random((7, 1)) * 10.0 ** rng.integers(-3, 3, (7, 1)))
  x = x.astype(np.float32)
  x[2, 64:96] = 0.0
  x[3, 5] = 1e30
  q_ref, d_ref = _runtime.quantize_acts(x, "scalar")
  q, d = _runtime.quantize_acts(x, isa)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_array_equal(d, d_ref)


@pytest.mark.parametrize("isa", ["scalar"] + ISAS)
def test_attention_kernel_matches_numpy(isa):
  if isa != "scalar":
    _require(isa)
  rng = np.random.default_rng(13)
  for nh, dh, length in [(1, 64, 1), (3, 64, 37), (1, 24, 5), (2, 256, 70), (4, 20, 16), (1, 48, 130)]:
    q = (rng.standard_normal((nh, dh)) * 2).astype(np.float32)
    k = (rng.standard_normal((length, dh)) * 2).astype(np.float16)
    v = rng.standard_normal((length, dh)).astype(np.float16)
    scale = 1 / np.sqrt(dh)
    got = _runtime.attend_f16(q, k.view(np.uint16), v.view(np.uint16), scale, isa)
    s = q.astype(np.float64) @ k.astype(np.float64).T * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = p @ v.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1, np.abs(want).max()),
                               err_msg=f"{isa} nh={nh} dh={dh} len={length}")


@pytest.mark.parametrize("isa", ["scalar"] + ISAS)
def test_gated_activation_matches_numpy(isa):
  if isa != "scalar":
    _require(isa)
  rng = np.random.default_rng(17)
  g = np.concatenate([rng.standard_normal(1000) * 3, [0.0, -0.0, 1e-8, -100.0, 100.0, 40.0, -40.0]])
  g = g.astype(np.float32)
  u = rng.standard_normal(g.size).astype(np.float32)
  x = g.astype(np.float64)
  gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  silu = x / (1 + np.exp(-x))
  for is_gelu, act in ((True, gelu), (False, silu)):
    got = _runtime.gated_act(g, u, is_gelu, isa)  # 1007 values: a ragged length
    want = act * u
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=f"{isa} gelu={is_gelu}")


def test_f16_conversion_rounds_to_nearest_even():
  rng = np.random.default_rng(5)
  x = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 5, 2000),
                      [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e-8, 6e-8, 2.0 ** -25, np.inf, -np.inf]])
  x = x.astype(np.float32)
  with np.errstate(over="ignore"):  # 65520 and up round to inf, as intended
    want = x.astype(np.float16).view(np.uint16)
  np.testing.assert_array_equal(np.asarray(_runtime.f32_to_f16_bits(x), np.uint16), want)


def test_auto_picks_the_best_available():
  names = _runtime.available_kernels()
  assert names[0] == "scalar"
  print("kernels available:", names, "|", _runtime.cpu_description())
