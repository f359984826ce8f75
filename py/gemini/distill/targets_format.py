"""Writer and reader of `.gkd` teacher-target side shards (format: FORMAT.md, this folder)."""

from __future__ import annotations

import os
import struct
from typing import List, Sequence, Tuple

import numpy as np

from gemini.crc32c import crc32c

MAGIC = b"GEMKDTGT"
VERSION = 1
HEADER_SIZE = 64
INDEX_ENTRY = 24
KIND_TOPK, KIND_SAMPLED = 1, 2
KINDS = {KIND_TOPK: "topk", KIND_SAMPLED: "sampled"}


class TargetsError(ValueError):
  """A malformed or mismatched `.gkd` file (the message names file, record and offset)."""


def _pad8(n: int) -> int:
  return (-n) % 8


def encode_record(ids: Sequence[np.ndarray], values: Sequence[np.ndarray], vocab_size: int,
                  max_slots: int, name: str = "") -> bytes:
  """One record from per-position id and value arrays (position p: ids[p], values[p])."""
  counts = np.asarray([len(x) for x in ids], np.uint16)
  if len(ids) != len(values) or any(len(a) != len(b) for a, b in zip(ids, values)):
    raise TargetsError(f"{name}: ids and values differ in length per position")
  if counts.size and (counts.min() < 1 or counts.max() > max_slots):
    raise TargetsError(f"{name}: per-position counts must be in [1, {max_slots}], got "
                       f"[{counts.min()}, {counts.max()}]")
  flat_ids = np.concatenate(ids).astype(np.int64) if len(ids) else np.zeros(0, np.int64)
  if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() >= vocab_size):
    raise TargetsError(f"{name}: id {int(flat_ids.max())} outside vocab_size {vocab_size}")
  flat_vals = (np.concatenate(values) if len(values) else np.zeros(0)).astype("<f2")
  c = counts.astype("<u2").tobytes()
  i = flat_ids.astype("<u2").tobytes()
  return c + b"\0" * _pad8(len(c)) + i + b"\0" * _pad8(len(i)) + flat_vals.tobytes()


class TargetsWriter:
  """Streams records into a `.gkd` file at `path` (written to path + '.tmp', renamed on close
  so a killed writer never leaves a file that looks complete)."""

  def __init__(self, path: str, kind: int, vocab_size: int, max_slots: int,
               temperature: float = 1.0):
    if kind not in KINDS:
      raise TargetsError(f"{path}: unknown kind {kind}")
    if vocab_size > 1 << 16:
      raise TargetsError(f"{path}: vocab_size {vocab_size} does not fit u16 ids")
    self.path, self.kind, self.vocab, self.k, self.t = path, kind, vocab_size, max_slots, temperature
    self._f = open(path + ".tmp", "wb")
    self._f.write(b"\0" * HEADER_SIZE)
    self._pos = HEADER_SIZE
    self._index: List[bytes] = []
    self.num_positions = 0
    self.num_pairs = 0

  def add(self, ids: Sequence[np.ndarray], values: Sequence[np.ndarray], tokens_crc: int) -> None:
    data = encode_record(ids, values, self.vocab, self.k, f"{self.path} record {len(self._index)}")
    self._index.append(struct.pack("<QIIII", self._pos, len(data), len(ids), tokens_crc,
                                   crc32c(data)))
    self._f.write(data + b"\0" * _pad8(len(data)))
    self._pos += len(data) + _pad8(len(data))
    self.num_positions += len(ids)
    self.num_pairs += sum(len(x) for x in ids)

  def close(self) -> None:
    index = b"".join(self._index)
    self._f.write(index)
    size = self._pos + len(index)
    head = MAGIC + struct.pack("<IIQQQIIIIf", VERSION, HEADER_SIZE, len(self._index), self._pos,
                               size, self.vocab, crc32c(index), self.kind, self.k, self.t)
    head += struct.pack("<I", crc32c(head))
    self._f.seek(0)
    self._f.write(head)
    self._f.close()
    os.replace(self.path + ".tmp", self.path)


class TargetsShard:
  """Reads a `.gkd` file (validated on open); `record(i)` -> (ids, values) padded to K."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      self._data = f.read()
    d, n = self._data, len(self._data)
    if n < HEADER_SIZE:
      raise TargetsError(f"{path}: {n} bytes, shorter than the {HEADER_SIZE}-byte header")
    if d[:8] != MAGIC:
      raise TargetsError(f"{path}: bad magic {d[:8]!r} at offset 0 (want {MAGIC!r})")
    (version, hsize, self.num_records, self.index_offset, fsize, self.vocab_size, index_crc,
     self.kind, self.max_slots, self.temperature) = struct.unpack_from("<IIQQQIIIIf", d, 8)
    (header_crc,) = struct.unpack_from("<I", d, 60)
    if version != VERSION:
      raise TargetsError(f"{path}: version {version} at offset 8, this reader knows {VERSION}")
    if crc32c(d[:60]) != header_crc:
      raise TargetsError(f"{path}: header CRC mismatch at offset 60")
    if hsize != HEADER_SIZE:
      raise TargetsError(f"{path}: header_size {hsize} at offset 12, want {HEADER_SIZE}")
    if fsize != n:
      raise TargetsError(f"{path}: truncated or padded: header says {fsize} bytes, file has {n}")
    end = self.index_offset + INDEX_ENTRY * self.num_records
    if self.index_offset < HEADER_SIZE or end != n:
      raise TargetsError(f"{path}: index at {self.index_offset} with {self.num_records} entries "
                         f"does not end at file size {n}")
    if crc32c(d[self.index_offset:end]) != index_crc:
      raise TargetsError(f"{path}: index CRC mismatch (index at offset {self.index_offset})")
    if self.kind not in KINDS:
      raise TargetsError(f"{path}: unknown kind {self.kind} at offset 48")
    self._index = [struct.unpack_from("<QIIII", d, self.index_offset + INDEX_ENTRY * i)
                   for i in range(self.num_records)]
    for i, (off, length, _, _, _) in enumerate(self._index):
      if off % 8 or off < HEADER_SIZE or off + length > self.index_offset:
        raise TargetsError(f"{path}: record {i} at offset {off} length {length} out of bounds")

  def __len__(self) -> int:
    return self.num_records

  def num_positions(self, i: int) -> int:
    return self._entry(i)[2]

  def tokens_crc(self, i: int) -> int:
    return self._entry(i)[3]

  def _entry(self, i: int):
    if not 0 <= i < self.num_records:
      raise TargetsError(f"{self.path}: record {i} outside [0, {self.num_records})")
    return self._index[i]

  def record(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [P, K], values f32 [P, K]); empty slots: id 0, value -inf."""
    off, length, p, _, crc = self._entry(i)
    raw = self._data[off:off + length]
    if crc32c(raw) != crc:
      raise TargetsError(f"{self.path}: record {i} CRC mismatch (offset {off})")
    counts = np.frombuffer(raw, "<u2", count=p).astype(np.int64)
    if p and (counts.min() < 1 or counts.max() > self.max_slots):
      raise TargetsError(f"{self.path}: record {i} has a count outside [1, {self.max_slots}]")
    m = int(counts.sum())
    a = 2 * p + _pad8(2 * p)
    b = a + 2 * m + _pad8(2 * m)
    if length != b + 2 * m:
      raise TargetsError(f"{self.path}: record {i} length {length} != {b + 2 * m} from its counts")
    ids = np.frombuffer(raw, "<u2", count=m, offset=a).astype(np.int32)
    vals = np.frombuffer(raw, "<f2", count=m, offset=b).astype(np.float32)
    if m and ids.max() >= self.vocab_size:
      raise TargetsError(f"{self.path}: record {i} id {ids.max()} >= vocab_size {self.vocab_size}")
    out_ids = np.zeros((p, self.max_slots), np.int32)
    out_vals = np.full((p, self.max_slots), -np.inf, np.float32)
    slot = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
    row = np.repeat(np.arange(p), counts)
    out_ids[row, slot] = ids
    out_vals[row, slot] = vals
    return out_ids, out_vals

  def check_pairs(self, token_shard) -> None:
    """Raises TargetsError unless every record matches `token_shard` (a gemini.data.loader
    Shard): same record count, P + 1 tokens and the same token-record CRC."""
    if len(token_shard) != self.num_records:
      raise TargetsError(f"{self.path}: {self.num_records} records, token shard has "
                         f"{len(token_shard)}")
    for i in range(self.num_records):
      toks = np.asarray(token_shard.tokens(i))
      if toks.size != self.num_positions(i) + 1:
        raise TargetsError(f"{self.path}: record {i} has {self.num_positions(i)} positions, "
                           f"token record has {toks.size} tokens")
      if record_crc(toks) != self.tokens_crc(i):
        raise TargetsError(f"{self.path}: record {i} was made for different tokens (CRC)")


def record_crc(tokens: np.ndarray) -> int:
  """CRC-32C of a token record as `.gshd` stores it (u16 ids: vocab ≤ 65,536)."""
  return crc32c(np.asarray(tokens).astype("<u2").tobytes())
