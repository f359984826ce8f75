"""evaluate(): the token-weighted held-out loss equals a NumPy cross-entropy over all tokens."""

import jax
import numpy as np
import pytest

from gemini.config import get_config
from gemini.model import transformer
from gemini.train.evaluate import evaluate, take_batches


def _batch(rng, b, s, vocab, pad):
  tokens = rng.integers(1, vocab, (b, s)).astype(np.int32)
  seg = np.ones((b, s), np.int32)
  seg[:, s - pad:] = 0                       # trailing padding is not counted
  return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
          "segment_ids": seg, "positions": np.tile(np.arange(s, dtype=np.int32), (b, 1))}


def _numpy_ce(logits, batch):
  logits = np.asarray(logits, np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = logz - np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
  keep = batch["segment_ids"] != 0
  return nll[keep].sum(), keep.sum()


def test_weighted_mean_matches_numpy():
  cfg = get_config("nano_tiny").replace(n_layers=1, vocab_size=64, d_model=32, n_heads=2,
                                        head_dim=16, d_ff=64, dtype="float32")
  params = transformer.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  # Unequal padding: a plain mean of per-batch losses would weight batches wrongly.
  batches = [_batch(rng, 2, 16, 64, pad=0), _batch(rng, 2, 16, 64, pad=12)]
  loss_fn = lambda p, b, key: transformer.loss_fn(p, b, cfg)
  got = evaluate(loss_fn, params, batches)
  nll = n = 0.0
  for b in batches:
    logits, _ = transformer.forward(params, b, cfg)
    x, c = _numpy_ce(logits, b)
    nll, n = nll + x, n + c
  assert got["tokens"] == n == 2 * 16 + 2 * 4
  np.testing.assert_allclose(got["loss"], nll / n, rtol=1e-5)
  assert 0.0 <= got["accuracy"] <= 1.0


def test_take_batches_copies_and_errors():
  batches = iter([{"tokens": np.zeros((1, 2), np.int32)}] * 3)
  got = take_batches(batches, 2)
  assert len(got) == 2 and got[0]["tokens"].shape == (1, 2)
  with pytest.raises(ValueError, match="no batches"):
    evaluate(lambda p, b, k: (0.0, {}), {}, [])
