"""The shard format and the C++ loader: round-trip, byte-for-byte encoders, packing, mixture,
resume, multi-host split, named errors, fuzz. Small synthetic shards (fast)."""

import json
import os
import struct

import numpy as np
import pytest

from csrc.loader import _loader
from gemini.crc32c import crc32c
from gemini.data import shard_writer as sw
from gemini.data.loader import Loader, Mixture, Shard, ShardError, Stage
from gemini.data.reference_loader import ReferenceLoader, mix64, read_shard_tokens

DOC_BASE = 4096  # Token = doc_id * DOC_BASE + position: every token names its document.


def tagged_docs(n, rng, first_id=0, max_len=60):
  return [np.arange(int(rng.integers(0, max_len))) + (first_id + d) * DOC_BASE
          for d in range(n)]


def write(path, records, vocab=0):
  with sw.ShardWriter(path, vocab) as w:
    for r in records:
      w.add(r)
  return str(path)


def sample_multimodal(rng):
  img = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
  pcm = rng.integers(-3000, 3000, (37,)).astype(np.int16)
  vid = rng.standard_normal((2, 3, 2, 1)).astype(np.float32)
  toks = rng.integers(0, 100, 20)
  return sw.MultimodalDoc(toks, [sw.Media("image", 2, 4, img), sw.Media("audio", 8, 3, pcm),
                                 sw.Media("video", 12, 5, vid),
                                 sw.Media("image", 19, 1, b"\x89PNG-not-really")])


def to_cpp_record(r):
  if not isinstance(r, sw.MultimodalDoc):
    return [int(x) for x in r]
  media = []
  for m in r.media:
    enc = isinstance(m.array, bytes)
    arr = None if enc else np.ascontiguousarray(m.array)
    media.append({"modality": sw.MODALITIES[m.modality],
                  "dtype": 4 if enc else sw.DTYPES[arr.dtype],
                  "placement": m.placement, "num_placeholders": m.num_placeholders,
                  "shape": [len(m.array)] if enc else list(arr.shape),
                  "bytes": m.array if enc else arr.tobytes()})
  return {"tokens": [int(x) for x in r.tokens], "media": media}


# ---------------------------------------------------------------- format
@pytest.mark.parametrize("vocab", [300, 100_000, 0])
def test_writer_reader_roundtrip(tmp_path, vocab):
  rng = np.random.default_rng(0)
  hi = vocab or 70_000
  recs = [rng.integers(0, hi, int(rng.integers(0, 50))) for _ in range(30)]
  recs.insert(5, sample_multimodal(rng))
  path = write(tmp_path / "a.gshd", recs, vocab)
  s = Shard(path)
  assert len(s) == len(recs) and s.vocab_size == vocab
  for i, r in enumerate(recs):
    rec = s.record(i)
    want = r.tokens if isinstance(r, sw.MultimodalDoc) else r
    np.testing.assert_array_equal(rec["tokens"], want)
    # The vocabulary fixes the width; without one (0) each record's max does.
    limit = vocab or (int(np.max(want)) + 1 if len(want) else 0)
    assert rec["tokens"].dtype == (np.uint16 if limit <= 65536 else np.uint32)
    if isinstance(r, sw.MultimodalDoc):
      assert rec["kind"] == sw.KIND_MULTIMODAL and len(rec["media"]) == len(r.media)
      for got, m in zip(rec["media"], r.media):
        assert (got["modality"], got["placement"], got["num_placeholders"]) == \
            (m.modality, m.placement, m.num_placeholders)
        if isinstance(m.array, bytes):
          assert got["encoded"] and got["array"].tobytes() == m.array
        else:
          assert got["array"].dtype == m.array.dtype
          np.testing.assert_array_equal(got["array"], m.array)
  # The independent Python parser reads the same tokens.
  for got, r in zip(read_shard_tokens(path, verify=True), recs):
    np.testing.assert_array_equal(got, r.tokens if isinstance(r, sw.MultimodalDoc) else r)
  # Views of the mapped file are read-only.
  with pytest.raises(ValueError):
    s.tokens(0)[0] = 1


def test_python_and_cpp_encoders_agree_byte_for_byte():
  rng = np.random.default_rng(1)
  for vocab, hi in ((512, 512), (1 << 20, 1 << 20), (0, 60_000), (0, 70_000)):
    recs = [rng.integers(0, hi, int(rng.integers(0, 40))) for _ in range(12)]
    recs += [sample_multimodal(rng), np.zeros(0, np.int64)]
    py_bytes = sw.encode_shard(recs, vocab)
    cpp_bytes = _loader.encode_shard([to_cpp_record(r) for r in recs], vocab)
    assert py_bytes == cpp_bytes
    # Spot-check fields against FORMAT.md directly.
    assert py_bytes[:8] == b"GEMSHARD"
    n, index_offset, size = struct.unpack_from("<QQQ", py_bytes, 16)
    assert (n, size) == (len(recs), len(py_bytes)) and index_offset + 24 * n == size
    assert struct.unpack_from("<I", py_bytes, 60)[0] == crc32c(py_bytes[:60])
    assert struct.unpack_from("<I", py_bytes, 44)[0] == crc32c(py_bytes[index_offset:])


def test_writer_rejects_bad_tokens(tmp_path):
  with pytest.raises(ValueError, match="out of range"):
    sw.encode_shard([np.array([1, 2, 600])], vocab_size=512)
  with pytest.raises(ValueError, match="placement"):
    sw.encode_shard([sw.MultimodalDoc(np.arange(3), [sw.Media("image", 2, 5, b"x")])])


# ---------------------------------------------------------------- errors and fuzz
def _shard_bytes():
  rng = np.random.default_rng(2)
  return sw.encode_shard([rng.integers(0, 500, 17) for _ in range(6)] + [sample_multimodal(rng)],
                         512)


def test_truncated_file_named_error(tmp_path):
  data = _shard_bytes()
  p = tmp_path / "trunc.gshd"
  p.write_bytes(data[:-10])
  with pytest.raises(ShardError, match=rf"'{p}'.*byte offset {len(data) - 10}.*truncated"):
    Shard(str(p))
  p.write_bytes(data[:40])
  with pytest.raises(ShardError, match=r"byte offset 0: truncated"):
    Shard(str(p))


def test_bad_magic_and_version(tmp_path):
  data = bytearray(_shard_bytes())
  p = tmp_path / "magic.gshd"
  p.write_bytes(b"XEMSHARD" + data[8:])
  with pytest.raises(ShardError, match=rf"'{p}': header at byte offset 0: bad magic"):
    Shard(str(p))
  data[8] = 7
  p.write_bytes(bytes(data))
  with pytest.raises(ShardError, match="byte offset 8: unsupported version 7"):
    Shard(str(p))


def test_crc_mismatch_names_record_and_offset(tmp_path):
  data = bytearray(_shard_bytes())
  n, index_offset = struct.unpack_from("<QQ", data, 16)
  off, length, _, _ = struct.unpack_from("<QQII", data, index_offset + 24 * 3)
  data[off + length // 2] ^= 0x40
  p = tmp_path / "crc.gshd"
  p.write_bytes(bytes(data))
  with pytest.raises(ShardError, match=rf"'{p}': record 3 at byte offset {off}: CRC mismatch"):
    Shard(str(p))
  # verify=False opens; the explicit check still names the record.
  s = Shard(str(p), verify=False)
  with pytest.raises(ShardError, match=rf"record 3 at byte offset {off}: CRC mismatch"):
    s.verify_record(3)
  # A corrupted index is caught by the index CRC.
  data = bytearray(_shard_bytes())
  data[index_offset + 1] ^= 1
  p.write_bytes(bytes(data))
  with pytest.raises(ShardError, match=rf"index at byte offset {index_offset}: index CRC"):
    Shard(str(p))


def test_out_of_range_index(tmp_path):
  s = Shard(write(tmp_path / "s.gshd", [np.arange(5)] * 3, 16))
  for bad in (3, -1, 10**6):
    with pytest.raises(ShardError, match=rf"record {bad} at byte offset \d+: index out of range"):
      s.tokens(bad)


EXTREMES = (0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


def test_fuzz_parser_never_crashes():
  """Seeded mutation loop (CI-short form of the fuzz target): every mutant either parses
  (and every record and media item is then readable) or raises ShardError."""
  base = _shard_bytes()
  rng = np.random.default_rng(1234)
  n_ok = n_err = 0
  for it in range(3000):
    d = bytearray(base)
    op = it % 4
    if op == 0:    # flip random bytes
      for _ in range(int(rng.integers(1, 8))):
        d[int(rng.integers(0, len(d)))] ^= int(rng.integers(1, 256))
    elif op == 1:  # truncate / extend
      d = d[:int(rng.integers(0, len(d)))] if rng.random() < 0.7 else d + bytes(8)
    elif op == 2:  # overwrite an integer field with an extreme value
      at = int(rng.integers(0, len(d) - 8))
      d[at:at + 8] = struct.pack("<Q", EXTREMES[int(rng.integers(0, len(EXTREMES)))])
    else:          # mutate, then re-seal the CRCs so the structural checks are reached
      at = int(rng.integers(16, len(d) - 4))
      d[at:at + 4] = struct.pack("<I", int(rng.integers(0, 2**32)))
      _reseal(d)
    try:
      s = Shard.from_bytes(bytes(d), "fuzz")
    except ShardError as e:
      assert "shard 'fuzz'" in str(e) and "byte offset" in str(e)
      n_err += 1
      continue
    n_ok += 1
    for i in range(len(s)):
      s.record(i)["tokens"].sum()
  assert n_err > 1000 and n_ok > 10  # Both paths exercised.


def _reseal(d):
  """Recompute header, index and record CRCs of a (possibly mutated) shard image in place."""
  if len(d) < 64:
    return
  n, index_offset = struct.unpack_from("<QQ", d, 16)
  if n < 1000 and index_offset + 24 * n <= len(d):
    for i in range(n):
      e = index_offset + 24 * i
      off, length = struct.unpack_from("<QQ", d, e)
      if off + length <= len(d):
        struct.pack_into("<I", d, e + 20, crc32c(bytes(d[off:off + length])))
    struct.pack_into("<I", d, 44, crc32c(bytes(d[index_offset:index_offset + 24 * n])))
  struct.pack_into("<I", d, 60, crc32c(bytes(d[:60])))


# ---------------------------------------------------------------- packing and loader
def check_batch(batch, docs_by_id):
  """Each segment is one contiguous run of one document; targets are its next tokens."""
  tok, tgt, seg, pos = (batch[k] for k in ("tokens", "targets", "segment_ids", "positions"))
  pairs = []
  for b in range(tok.shape[0]):
    assert seg[b, 0] == 1 and np.all(np.diff(seg[b]) >= 0) and np.all(np.diff(seg[b]) <= 1)
    for sid in np.unique(seg[b]):
      m = seg[b] == sid
      t, y, p = tok[b, m], tgt[b, m], pos[b, m]
      doc = t // DOC_BASE
      assert np.all(doc == doc[0]) and np.all(y // DOC_BASE == doc[0])   # one document
      np.testing.assert_array_equal(p, np.arange(len(t)))              # restart at 0
      np.testing.assert_array_equal(y, t + 1)                          # next token
      np.testing.assert_array_equal(np.diff(t), 1)                     # contiguous run
      assert docs_by_id[doc[0]][-1] >= y[-1]
      pairs.extend(t.tolist())
  return pairs


def make_sources(tmp_path, n_docs=(40, 25), seed=0):
  rng = np.random.default_rng(seed)
  sources, docs, first = {}, {}, 0
  for k, n in enumerate(n_docs):
    ds = tagged_docs(n, rng, first)
    first += n
    half = n // 2
    name = f"src{k}"
    sources[name] = [write(tmp_path / f"{name}_a.gshd", ds[:half]),
                     write(tmp_path / f"{name}_b.gshd", ds[half:])]
    docs[name] = ds
  return sources, docs


@pytest.mark.parametrize("threads,prefetch", [(0, 0), (1, 2), (2, 4)])
def test_cpp_loader_equals_reference(tmp_path, threads, prefetch):
  sources, docs = make_sources(tmp_path)
  mix = Mixture([Stage({"src0": 3.0, "src1": 1.0}, until_batch=7),
                 Stage({"src0": 0.0, "src1": 1.0}, until_batch=12),
                 Stage({"src0": 1.0, "src1": 1.0})])
  for pi, pc in ((0, 1), (1, 2)):
    cpp = Loader(sources, 3, 32, mixture=mix, seed=5, process_index=pi, process_count=pc,
                 prefetch=prefetch, threads=threads)
    ref = ReferenceLoader(docs, 3, 32, stages=mix.resolve(list(sources)), seed=5,
                          process_index=pi, process_count=pc)
    for _ in range(40):
      got, want = cpp.next(), ref.next()
      for k in want:
        assert got[k].dtype == np.int32 and got[k].shape == (3, 32)
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    cpp.close()


def test_packing_covers_every_pair_once_per_epoch(tmp_path):
  rng = np.random.default_rng(3)
  docs = tagged_docs(50, rng, max_len=90)  # some longer than a row: split across rows/batches
  path = write(tmp_path / "p.gshd", docs)
  total_pairs = sum(max(len(d) - 1, 0) for d in docs)
  B, S = 2, 16
  loader = Loader({"s": [path]}, B, S, seed=1, prefetch=2)
  by_id = {i: d for i, d in enumerate(docs)}
  seen = []
  while len(seen) < total_pairs:
    seen.extend(check_batch(loader.next(), by_id))
  want = sorted(t for d in docs for t in d[:-1].tolist())
  assert sorted(seen[:total_pairs]) == want  # first epoch: every (input, target) pair once
  assert loader.state()["epochs"] == [1]


def test_resume_gives_identical_stream_1000_batches(tmp_path):
  sources, _ = make_sources(tmp_path, (30, 20))
  mix = Mixture([Stage({"src0": 1.0, "src1": 1.0}, until_batch=500),
                 Stage({"src0": 1.0, "src1": 4.0})])
  kw = dict(batch_size=2, seq_len=16, mixture=mix, seed=9, threads=2, prefetch=3)
  straight = Loader(sources, **kw)
  want = [straight.next() for _ in range(1000)]
  got, state = [], None
  while len(got) < 1000:
    l = Loader(sources, **kw)           # a fresh process after a "crash"
    if state is not None:
      l.restore(json.loads(json.dumps(state)))  # through a checkpoint's JSON
    for _ in range(min(137, 1000 - len(got))):
      got.append(l.next())
    state = l.state()
    l.close()
  for i, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=f"batch {i} {k}")
  assert state["batch_index"] == 1000


def test_restore_rewinds_same_loader(tmp_path):
  sources, _ = make_sources(tmp_path)
  l = Loader(sources, 2, 8, seed=0, prefetch=4, threads=2)
  l.next()
  s = l.state()
  a = [l.next()["tokens"] for _ in range(5)]
  l.restore(s)
  b = [l.next()["tokens"] for _ in range(5)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="loader state"):
    l.restore(dict(s, epochs=[0]))


def test_two_processes_disjoint_and_cover_epoch(tmp_path):
  # 9-token documents and rows of 8 pairs: every row is exactly one document.
  n = 37
  path = write(tmp_path / "m.gshd", [np.arange(9) + i * DOC_BASE for i in range(n)])
  seen = []
  for pi in range(2):
    l = Loader({"s": [path]}, 1, 8, seed=3, process_index=pi, process_count=2, threads=2)
    mine = (n - pi + 1) // 2
    ids = [int(l.next()["tokens"][0, 0] // DOC_BASE) for _ in range(mine)]
    assert len(set(ids)) == mine and l.state()["epochs"] == [1]
    seen.append(set(ids))
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(n))


def test_staged_mixture_switches_sources(tmp_path):
  sources, docs = make_sources(tmp_path, (30, 30))
  mix = Mixture([Stage({"src0": 1.0}, until_batch=20), Stage({"src1": 1.0})])
  l = Loader(sources, 2, 16, mixture=mix, seed=2)
  for b in range(40):
    ids = l.next()["tokens"] // DOC_BASE
    if b < 20:
      assert np.all(ids < 30), b
    elif b >= 24:  # a src0 document in progress at the switch may finish first
      assert np.all(ids >= 30), b


def test_mixture_proportions(tmp_path):
  # Equal-length docs so the share of draws equals the share of tokens.
  a = write(tmp_path / "a2.gshd", [np.arange(9) + i * DOC_BASE for i in range(50)])
  b = write(tmp_path / "b2.gshd", [np.arange(9) + (1000 + i) * DOC_BASE for i in range(50)])
  l = Loader({"a": [a], "b": [b]}, 8, 64, mixture=Mixture.constant({"a": 0.8, "b": 0.2}), seed=0)
  toks = np.concatenate([l.next()["tokens"].ravel() for _ in range(60)])
  share_a = np.mean(toks // DOC_BASE < 1000)
  assert abs(share_a - 0.8) < 0.03, share_a


def test_bad_loader_arguments(tmp_path):
  sources, _ = make_sources(tmp_path)
  with pytest.raises(ValueError, match="unknown sources"):
    Loader(sources, 2, 8, mixture=Mixture.constant({"nope": 1.0}))
  with pytest.raises(ValueError, match="process_index"):
    Loader(sources, 2, 8, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="all zero"):
    Loader(sources, 2, 8, mixture=Mixture.constant({"src0": 0.0}))
  with pytest.raises(ShardError, match="cannot open"):
    Loader({"x": [str(tmp_path / "missing.gshd")]}, 2, 8)


def test_mix64_matches_reference():
  for x in (0, 1, 2**63, 2**64 - 1, 123456789):
    assert _loader.mix64(x) == mix64(x)


def test_multimodal_records_pack_their_token_lists(tmp_path):
  rng = np.random.default_rng(6)
  recs = [sample_multimodal(rng) for _ in range(5)] + [rng.integers(0, 100, 30)]
  path = write(tmp_path / "mm.gshd", recs, 512)
  docs = read_shard_tokens(path, verify=True)
  cpp = Loader({"mm": [path]}, 2, 16, seed=4)
  ref = ReferenceLoader({"mm": docs}, 2, 16, seed=4)
  for _ in range(12):
    got, want = cpp.next(), ref.next()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
