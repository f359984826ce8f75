"""The pybind11 CRC-32C module against RFC 3720 B.4 vectors and the pure-Python reference."""

import numpy as np
import pytest

from csrc.common import _crc32c
from gemini import crc32c as crc_lib

RFC3720 = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
]


@pytest.mark.parametrize("data,want", RFC3720)
def test_rfc3720_vectors(data, want):
  assert _crc32c.crc32c(data) == want
  assert _crc32c.crc32c_portable(data) == want
  assert crc_lib.crc32c_python(data) == want
  assert crc_lib.crc32c(data) == want


def test_gemini_wrapper_uses_native_under_bazel():
  assert crc_lib.native_available()


def test_random_buffers_match_python_reference_and_extend():
  rng = np.random.default_rng(0)
  for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4097]:
    data = rng.integers(0, 256, n, dtype=np.uint8)
    want = crc_lib.crc32c_python(data.tobytes())
    assert _crc32c.crc32c(data) == want
    cut = n // 3
    assert _crc32c.crc32c(data[cut:], _crc32c.crc32c(data[:cut])) == want


def test_numpy_arrays_hash_their_bytes():
  arr = np.arange(100, dtype=np.uint32)
  assert _crc32c.crc32c(arr) == crc_lib.crc32c_python(arr.tobytes())


def test_non_contiguous_buffer_is_refused():
  arr = np.arange(100, dtype=np.uint32)[::2]
  with pytest.raises(ValueError, match="contiguous"):
    _crc32c.crc32c(arr)
