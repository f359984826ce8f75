"""Hostile but checksum-valid `.gshd` files against the shard reader and the loader.

Every mutant has all its CRCs recomputed (`reseal`), so only the reader's bounds and value
checks can catch it. Finding by finding: token ids past the vocabulary, a FIFO given as a
path; then a seeded mutation sweep where each mutant is either refused with a ShardError
naming the file, or opens to a shard whose every record is in bounds (checked here in
Python, independently of the reader)."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gemini.crc32c import crc32c
from gemini.data import shard_writer as sw
from gemini.data.loader import Loader, Shard, ShardError

HEADER = struct.Struct("<8sIIQQQIIII8xI")  # FORMAT.md's 64-byte header
HANG_SECONDS = 60  # A reader still busy after this long is blocked, not working.


def reseal(data: bytes) -> bytes:
  """Recomputes every record CRC (where the entry is in bounds), the index and header CRCs."""
  b = bytearray(data)
  if len(b) < 64:
    return bytes(b)
  n, idx = struct.unpack_from("<QQ", b, 16)
  if n < 10000 and idx <= len(b) and n * 24 <= len(b) - idx:
    for i in range(n):
      e = idx + 24 * i
      off, length = struct.unpack_from("<QQ", b, e)
      if off <= len(b) and length <= len(b) - off:
        struct.pack_into("<I", b, e + 20, crc32c(bytes(b[off:off + length])))
    struct.pack_into("<I", b, 44, crc32c(bytes(b[idx:idx + 24 * n])))
  struct.pack_into("<I", b, 60, crc32c(bytes(b[:60])))
  return bytes(b)


def with_vocab(data: bytes, vocab: int) -> bytes:
  b = bytearray(data)
  struct.pack_into("<I", b, 40, vocab)
  return reseal(bytes(b))


def text_shard() -> bytes:
  # Written with vocab 0 (unchecked), then the header claims 8192: record 1 holds 65535.
  docs = [np.array([1, 2, 3, 4]), np.array([5, 6, 65535, 7]), np.array([8, 9, 10])]
  return with_vocab(sw.encode_shard(docs, 0), 8192)


def test_token_ids_past_the_vocabulary_are_refused_by_reader_and_loader(tmp_path):
  data = text_shard()
  want = r"token id 65535 at position 2 is >= the shard's vocab_size 8192"
  with pytest.raises(ShardError, match=r"^shard 'v\.gshd': record 1 at byte offset \d+: " + want):
    Shard.from_bytes(data, "v.gshd")
  path = tmp_path / "v.gshd"
  path.write_bytes(data)
  lax = Shard(str(path), verify=False)  # Skips per-record reads on open ...
  with pytest.raises(ShardError, match=want):
    lax.verify_record(1)                # ... and verify_record checks the ids too.
  with pytest.raises(ShardError, match=str(path) + r"'.*" + want):
    Loader({"s": [str(path)]}, batch_size=1, seq_len=16, verify=False, prefetch=0).next()
  # Unknown vocabulary in the header: the model's vocab_size given to the loader catches it.
  unknown = tmp_path / "u.gshd"
  unknown.write_bytes(with_vocab(data, 0))
  with pytest.raises(ShardError, match="token id 65535 at position 2 is >= the model's vocab_size 8192"):
    Loader({"s": [str(unknown)]}, batch_size=1, seq_len=16, vocab_size=8192).next()
  big = tmp_path / "big.gshd"
  big.write_bytes(with_vocab(data, 70000))
  with pytest.raises(ValueError, match="has vocab_size 70000, larger than the model's vocab_size 8192"):
    Loader({"s": [str(big)]}, batch_size=1, seq_len=16, vocab_size=8192)
  batch = Loader({"s": [str(big)]}, batch_size=1, seq_len=16, vocab_size=70000).next()
  assert 65535 in batch["tokens"]  # In range everywhere: packed as written.


def _open_in_child(code: str, path: str):
  """Runs `code` (with `path` bound) in a fresh interpreter; a hang fails by the timeout."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  try:
    return subprocess.run([sys.executable, "-c", f"path = {path!r}\n{code}"], env=env,
                          capture_output=True, text=True, timeout=HANG_SECONDS)
  except subprocess.TimeoutExpired:
    pytest.fail(f"reader blocked on {path} for {HANG_SECONDS} s")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, kind):
  if kind == "fifo":
    path = str(tmp_path / "shard.gshd")
    os.mkfifo(path)
    what = "a FIFO"
  elif kind == "directory":
    path, what = str(tmp_path), "a directory"
  else:
    path, what = "/dev/zero", "a character device"
  for code in ("from gemini.data.loader import Shard\nShard(path)",
               "from gemini.data.loader import Loader\nLoader({'s': [path]}, 1, 8)"):
    out = _open_in_child(code, path)
    assert out.returncode == 1, out.stderr
    assert f"ShardError: shard '{path}': file at byte offset 0: cannot open: not a regular file ({what})" \
        in out.stderr, out.stderr


def seed_shard() -> bytes:
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 1000, int(rng.integers(0, 30))) for _ in range(5)]
  docs.append(sw.MultimodalDoc(tokens=np.arange(12), media=[
      sw.Media("image", 2, 4, np.full((2, 3, 1), 7, np.uint8)),
      sw.Media("audio", 6, 3, np.arange(5, dtype=np.int16)),
      sw.Media("video", 9, 2, b"png")]))
  return sw.encode_shard(docs, 1000)


def _check_valid(s: Shard, size: int):
  """An accepted shard, checked without the reader's help: ids in the vocabulary, media
  inside the tokens and payload sizes equal to their shapes."""
  for i in range(len(s)):
    rec = s.record(i)
    t = np.asarray(rec["tokens"])
    assert s.vocab_size == 0 or (t < s.vocab_size).all(), (i, t.max(), s.vocab_size)
    for m in rec["media"]:
      assert 0 <= m["placement"] and m["placement"] + m["num_placeholders"] <= len(t)
      assert m["array"].nbytes <= size


def test_mutation_sweep_every_mutant_is_refused_or_valid():
  base = seed_shard()
  rng = np.random.default_rng(15)
  extremes = [0, 1, 999, 1000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1]
  counts = {"refused": 0, "valid": 0}
  for it in range(400):
    b = bytearray(base)
    at = int(rng.integers(8, len(b) - 8))
    if it % 2:
      struct.pack_into("<Q", b, at, extremes[int(rng.integers(len(extremes)))])
    else:
      struct.pack_into("<I", b, at, int(rng.integers(0, 1 << 32)))
    data = reseal(bytes(b))
    try:
      s = Shard.from_bytes(data, "m.gshd")
    except ShardError as e:
      assert str(e).startswith("shard 'm.gshd': "), str(e)
      counts["refused"] += 1
      continue
    _check_valid(s, len(data))
    counts["valid"] += 1
  assert counts["refused"] > 100 and counts["valid"] > 10, counts
