"""teacher_targets and the `.gkd` side-shard format: reader vs writer, validation, the stored
targets against the teacher's own distribution, resume after a kill."""

import filecmp
import glob
import os
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.data.loader import Shard
from gemini.distill import targets_format as tf
from gemini.distill import teacher_targets
from gemini.model import transformer

from gemini.distill.testing import targets_args, tiny_teacher


def _rows(rng, p, k, vocab):
  counts = rng.integers(1, k + 1, size=p)
  ids = [rng.choice(vocab, size=c, replace=False).astype(np.int32) for c in counts]
  vals = [np.sort(rng.normal(size=c).astype(np.float32))[::-1] for c in counts]
  return ids, vals


def test_reader_returns_what_the_writer_wrote(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "x.gkd")
  w = tf.TargetsWriter(path, tf.KIND_SAMPLED, 1000, 7, temperature=1.5)
  recs = [_rows(rng, p, 7, 1000) for p in (5, 1, 9)]
  for i, (ids, vals) in enumerate(recs):
    w.add(ids, vals, tokens_crc=100 + i)
  w.close()
  r = tf.TargetsShard(path)
  assert (len(r), r.kind, r.max_slots, r.vocab_size) == (3, tf.KIND_SAMPLED, 7, 1000)
  assert r.temperature == pytest.approx(1.5)
  for i, (ids, vals) in enumerate(recs):
    got_ids, got_vals = r.record(i)
    assert got_ids.shape == (len(ids), 7) and r.tokens_crc(i) == 100 + i
    for p in range(len(ids)):
      c = len(ids[p])
      np.testing.assert_array_equal(got_ids[p, :c], ids[p])
      np.testing.assert_array_equal(got_vals[p, :c], vals[p].astype(np.float16).astype(np.float32))
      assert np.all(np.isneginf(got_vals[p, c:])) and np.all(got_ids[p, c:] == 0)
  # Bytes follow FORMAT.md exactly: header fields and the first record's layout.
  raw = open(path, "rb").read()
  assert raw[:8] == b"GEMKDTGT" and struct.unpack_from("<I", raw, 8)[0] == 1
  counts = np.frombuffer(raw, "<u2", count=5, offset=64)
  np.testing.assert_array_equal(counts, [len(x) for x in recs[0][0]])


def test_corruption_and_truncation_are_named(tmp_path):
  rng = np.random.default_rng(1)
  path = str(tmp_path / "y.gkd")
  w = tf.TargetsWriter(path, tf.KIND_TOPK, 50, 4)
  w.add(*_rows(rng, 3, 4, 50), tokens_crc=0)
  w.close()
  raw = bytearray(open(path, "rb").read())
  bad = bytearray(raw)
  bad[66] ^= 0xFF                                   # inside record 0
  open(path, "wb").write(bad)
  with pytest.raises(tf.TargetsError, match="y.gkd: record 0 CRC mismatch"):
    tf.TargetsShard(path).record(0)
  open(path, "wb").write(raw[:-3])
  with pytest.raises(tf.TargetsError, match="truncated"):
    tf.TargetsShard(path)
  bad = bytearray(raw)
  bad[0] = ord("X")
  open(path, "wb").write(bad)
  with pytest.raises(tf.TargetsError, match="bad magic"):
    tf.TargetsShard(path)
  with pytest.raises(tf.TargetsError, match="outside vocab_size"):
    tf.TargetsWriter(str(tmp_path / "z.gkd"), tf.KIND_TOPK, 50, 4).add(
        [np.array([50])], [np.array([0.0])], 0)


@pytest.fixture(scope="module")
def targets_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("kd"))
  teacher = tiny_teacher()
  summary = teacher_targets.run(targets_args(out), teacher=teacher, log=lambda _: None)
  return out, teacher, summary


def test_stored_targets_are_the_teachers_distribution(targets_dir):
  out, teacher, summary = targets_dir
  tok_paths = sorted(glob.glob(os.path.join(out, "train", "tokens", "*.gshd")))
  assert len(tok_paths) == 3                        # 12 windows, 5 per shard
  total = 0
  for p in tok_paths:
    shard = Shard(p)                                # the C++ loader reads the token side
    top = tf.TargetsShard(p.replace("tokens", "topk")[:-5] + ".gkd")
    samp = tf.TargetsShard(p.replace("tokens", "sampled")[:-5] + ".gkd")
    top.check_pairs(shard)
    samp.check_pairs(shard)
    for i in range(len(shard)):
      toks = np.asarray(shard.tokens(i), np.int32)
      assert toks.shape == (17,)
      logits = transformer.forward(teacher.params, {"tokens": jnp.asarray(toks[None, :-1])},
                                   teacher.cfg)[0][0]
      lg = np.asarray(logits, np.float64)
      logp = lg - lg.max(-1, keepdims=True)
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      ids, vals = top.record(i)
      want = np.argsort(-logp, -1, kind="stable")[:, :16]
      # Ties aside, the stored ids are the teacher's 16 most likely, in order.
      np.testing.assert_allclose(np.take_along_axis(logp, ids, -1),
                                 np.take_along_axis(logp, want, -1), atol=1e-5)
      np.testing.assert_allclose(vals, np.take_along_axis(logp, ids, -1), atol=4e-3, rtol=2e-3)
      s_ids, s_vals = samp.record(i)
      mass = np.where(np.isfinite(s_vals), np.exp(s_vals), 0).sum(-1)
      np.testing.assert_allclose(mass, 1.0, atol=2e-3)
      total += 16
  assert summary["train"]["tokens"] == total
  bpt = summary["bytes_per_token"]
  assert bpt["full_logits_f16"] == 2 * 260
  assert 2 + 4 * 16 <= bpt["top16"] < 2 + 4 * 16 + 20      # + header/index/padding overhead


def test_a_killed_run_resumes_to_identical_files(targets_dir, tmp_path):
  out, teacher, _ = targets_dir
  # A kill leaves finished shards and maybe a .tmp; the rerun skips the finished ones.
  redo = str(tmp_path / "redo")
  os.makedirs(redo)
  shutil.copytree(os.path.join(out, "train"), os.path.join(redo, "train"))
  for kind in ("topk", "sampled"):
    os.remove(os.path.join(redo, "train", kind, "00001.gkd"))
  open(os.path.join(redo, "train", "topk", "00002.gkd.tmp"), "wb").write(b"partial")
  os.remove(os.path.join(redo, "train", "topk", "00002.gkd"))
  teacher_targets.run(targets_args(redo), teacher=teacher, log=lambda _: None)
  for p in glob.glob(os.path.join(out, "*", "*", "*.g*")):
    q = os.path.join(redo, os.path.relpath(p, out))
    assert filecmp.cmp(p, q, shallow=False), p
