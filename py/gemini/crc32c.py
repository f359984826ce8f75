"""CRC-32C (Castagnoli), the checksum of every binary format in this repo.

`crc32c(data, crc=0) -> int` uses the native extension `//csrc/common:_crc32c` (SSE4.2,
GIL released) when it is importable — always under Bazel — and otherwise a table-driven
pure-Python loop (slow: for development outside Bazel on small inputs). Both are tested
against the RFC 3720 vectors and against each other.
"""

from __future__ import annotations

from typing import Union

Buffer = Union[bytes, bytearray, memoryview]

_POLY = 0x82F63B78


def _make_table():
  table = []
  for b in range(256):
    c = b
    for _ in range(8):
      c = (c >> 1) ^ (_POLY if c & 1 else 0)
    table.append(c)
  return tuple(table)


_TABLE = _make_table()


def crc32c_python(data: Buffer, crc: int = 0) -> int:
  """Pure-Python CRC-32C of `data`'s bytes, extending `crc`."""
  c = crc ^ 0xFFFFFFFF
  for byte in memoryview(data).cast("B"):
    c = (c >> 8) ^ _TABLE[(c ^ byte) & 0xFF]
  return c ^ 0xFFFFFFFF


try:
  from csrc.common import _crc32c as _native
except ImportError:  # Outside Bazel, before the extension is built.
  _native = None


def native_available() -> bool:
  return _native is not None


def crc32c(data, crc: int = 0) -> int:
  """CRC-32C of a bytes-like or C-contiguous NumPy buffer, extending `crc` (uint32 int)."""
  if _native is not None:
    return _native.crc32c(data, crc)
  return crc32c_python(data, crc)
