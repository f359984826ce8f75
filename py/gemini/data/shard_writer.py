"""Writer of `.gshd` shards (format: csrc/loader/FORMAT.md), the Python side of the format.

`ShardWriter(path, vocab_size)` streams records to disk; `encode_shard(records, vocab_size)`
returns the whole file as bytes (used by the byte-for-byte test against the C++ encoder).
A record is either a 1-D integer token array (a text document) or a `MultimodalDoc`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from typing import BinaryIO, List, Sequence, Union

import numpy as np

from gemini.crc32c import crc32c

MAGIC = b"GEMSHARD"
VERSION = 1
HEADER_SIZE = 64
INDEX_ENTRY = 24
KIND_TOKENS_U16 = 1
KIND_TOKENS_U32 = 2
KIND_MULTIMODAL = 3
MODALITIES = {"image": 1, "audio": 2, "video": 3}
DTYPES = {np.dtype(np.uint8): 1, np.dtype("<i2"): 2, np.dtype("<f4"): 3}
DTYPE_ENCODED = 4
MEDIA_DESC = 56


@dataclasses.dataclass
class Media:
  """One media item: `array` (uint8/int16/float32 ndarray, or `bytes` = encoded, e.g. PNG)
  occupying `num_placeholders` tokens starting at token index `placement`."""
  modality: str
  placement: int
  num_placeholders: int
  array: Union[np.ndarray, bytes]


@dataclasses.dataclass
class MultimodalDoc:
  tokens: np.ndarray          # int [T], placeholders included
  media: List[Media]


Record = Union[np.ndarray, Sequence[int], MultimodalDoc]


def _pad8(n: int) -> int:
  return (-n) % 8


def _token_array(tokens, vocab_size: int) -> np.ndarray:
  t = np.asarray(tokens)
  if t.ndim != 1 or not (np.issubdtype(t.dtype, np.integer) or t.size == 0):
    raise ValueError(f"shard record: tokens must be a 1-D integer array, got {t.dtype} {t.shape}")
  t = t.astype(np.int64)
  if t.size and (t.min() < 0 or (vocab_size and t.max() >= vocab_size) or t.max() >= 2**32):
    raise ValueError(f"shard record: token id out of range [0, {vocab_size or 2**32}): "
                     f"min {t.min()} max {t.max()}")
  return t


def _width(t: np.ndarray, vocab_size: int) -> int:
  # The vocabulary, not the record's max, decides the width so a shard is uniform.
  limit = vocab_size if vocab_size else (int(t.max()) + 1 if t.size else 0)
  return 2 if limit <= 65536 else 4


def encode_record(record: Record, vocab_size: int) -> tuple[int, bytes]:
  """Returns (kind, record bytes) for one record."""
  if isinstance(record, MultimodalDoc):
    return KIND_MULTIMODAL, _encode_multimodal(record, vocab_size)
  t = _token_array(record, vocab_size)
  if _width(t, vocab_size) == 2:
    return KIND_TOKENS_U16, t.astype("<u2").tobytes()
  return KIND_TOKENS_U32, t.astype("<u4").tobytes()


def _encode_multimodal(doc: MultimodalDoc, vocab_size: int) -> bytes:
  t = _token_array(doc.tokens, vocab_size)
  width = _width(t, vocab_size)
  tok = t.astype("<u2" if width == 2 else "<u4").tobytes()
  m = len(doc.media)
  head_len = 16 + MEDIA_DESC * m
  off = head_len + len(tok) + _pad8(head_len + len(tok))
  descs, payloads = [], []
  for item in doc.media:
    if item.modality not in MODALITIES:
      raise ValueError(f"shard record: unknown modality {item.modality!r}")
    if item.placement < 0 or item.num_placeholders < 0 or \
        item.placement + item.num_placeholders > len(t):
      raise ValueError(f"shard record: media placement {item.placement}+{item.num_placeholders}"
                       f" outside the {len(t)} tokens")
    if isinstance(item.array, (bytes, bytearray)):
      dtype, shape, data = DTYPE_ENCODED, (len(item.array),), bytes(item.array)
    else:
      a = np.ascontiguousarray(item.array)
      a = a.astype(a.dtype.newbyteorder("<"))
      if a.dtype not in DTYPES or not 1 <= a.ndim <= 4:
        raise ValueError(f"shard record: media array dtype {a.dtype} ndim {a.ndim} unsupported")
      dtype, shape, data = DTYPES[a.dtype], a.shape, a.tobytes()
    dims = list(shape) + [0] * (4 - len(shape))
    descs.append(struct.pack("<9IIQQ", MODALITIES[item.modality], dtype, item.placement,
                             item.num_placeholders, len(shape), *dims, 0, off, len(data)))
    payloads.append(data + b"\0" * _pad8(len(data)))
    off += len(data) + _pad8(len(data))
  out = struct.pack("<4I", width, len(t), m, 0) + b"".join(descs) + tok
  out += b"\0" * _pad8(len(out))
  # Padding included: a multimodal record's length is always a multiple of 8.
  return out + b"".join(payloads)


class ShardWriter:
  """Streams records into a `.gshd` file; `close()` writes the index and the header."""

  def __init__(self, path_or_file: Union[str, os.PathLike, BinaryIO], vocab_size: int = 0):
    self._own = not hasattr(path_or_file, "write")
    self._f = open(path_or_file, "wb") if self._own else path_or_file
    self._vocab = int(vocab_size)
    self._index: List[bytes] = []
    self._pos = HEADER_SIZE
    self._f.write(b"\0" * HEADER_SIZE)
    self.num_tokens = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __len__(self) -> int:
    return len(self._index)

  def add(self, record: Record) -> None:
    kind, data = encode_record(record, self._vocab)
    self.num_tokens += len(record.tokens) if isinstance(record, MultimodalDoc) else len(record)
    self._index.append(struct.pack("<QQII", self._pos, len(data), kind, crc32c(data)))
    self._f.write(data + b"\0" * _pad8(len(data)))
    self._pos += len(data) + _pad8(len(data))

  def close(self) -> None:
    if self._f is None:
      return
    index = b"".join(self._index)
    self._f.write(index)
    file_size = self._pos + len(index)
    head = MAGIC + struct.pack("<IIQQQIIIII", VERSION, HEADER_SIZE, len(self._index), self._pos,
                               file_size, self._vocab, crc32c(index), 0, 0, 0)
    head += struct.pack("<I", crc32c(head))
    assert len(head) == HEADER_SIZE
    self._f.seek(0)
    self._f.write(head)
    self._f.seek(file_size)
    if self._own:
      self._f.close()
    self._f = None


def encode_shard(records: Sequence[Record], vocab_size: int = 0) -> bytes:
  """The complete `.gshd` file for `records`, as bytes."""
  buf = io.BytesIO()
  w = ShardWriter(buf, vocab_size)
  for r in records:
    w.add(r)
  w.close()
  return buf.getvalue()


def write_shards(records, out_dir: str, vocab_size: int, max_bytes: int = 64 << 20,
                 prefix: str = "") -> List[str]:
  """Writes an iterable of records into `out_dir/{prefix}NNNNN.gshd` files of about
  `max_bytes` each; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths: List[str] = []
  w = None
  for r in records:
    if w is None or w._pos >= max_bytes:
      if w is not None:
        w.close()
      paths.append(os.path.join(out_dir, f"{prefix}{len(paths):05d}.gshd"))
      w = ShardWriter(paths[-1], vocab_size)
    w.add(r)
  if w is not None:
    w.close()
  return paths
