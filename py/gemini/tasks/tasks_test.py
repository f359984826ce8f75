"""Task data against independent checks (the IDX bytes, the published class balance, the
kv sequences' invariants)."""

import gzip

import numpy as np
import pytest

from gemini.tasks import fashion_mnist, kv_retrieval


def test_idx_reader_matches_raw_bytes_and_counts():
  x, y = fashion_mnist.load("test")
  assert x.shape == (10000, 28, 28) and y.shape == (10000,)
  with gzip.open(f"{fashion_mnist.ROOT}/t10k-images-idx3-ubyte.gz") as f:
    raw = f.read()
  np.testing.assert_array_equal(x[1].ravel(), np.frombuffer(raw[16 + 784:16 + 2 * 784], np.uint8))
  assert np.bincount(y).tolist() == [1000] * 10          # the published balanced test set
  xt, _ = fashion_mnist.load("train")
  assert xt.shape == (60000, 28, 28)


def test_captions_round_trip_through_the_vocabulary():
  voc = fashion_mnist.vocab()
  for c in range(10):
    text = fashion_mnist.caption(c)
    assert voc.decode(voc.encode(text)) == text
  assert fashion_mnist.caption(9) == "an ankle boot"


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0, -1.0])
def test_kv_example_answer_is_the_queried_keys_value(depth):
  lay = kv_retrieval.Layout()
  rng = np.random.default_rng(3)
  for _ in range(20):
    seq, pos, ans, needle = kv_retrieval.make_example(rng, lay, 256, 8, depth)
    assert len(seq) == 256 and pos == 255 and seq[-2] == kv_retrieval.QUERY
    key = seq[-1]
    where = np.flatnonzero(seq[:-2] == key)
    assert len(where) == 1                                # keys occur once in the context
    assert where[0] == needle and seq[needle + 1] == ans
    assert lay.val0 <= ans < lay.fill0
    if depth >= 0:
      assert abs((needle - 1) / (256 - 5) - depth) < 0.02
