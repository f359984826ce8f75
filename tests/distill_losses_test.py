"""Distillation losses against NumPy computations written out independently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.distill import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _case(seed=0, b=2, s=3, v=11, k=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, s, v)).astype(np.float32) * 2
  teacher = rng.normal(size=(b, s, v)).astype(np.float32) * 3
  targets = rng.integers(0, v, size=(b, s)).astype(np.int32)
  weights = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  return logits, teacher, targets, weights


def _np_sparse_kd(logits, ids, vals, weights, t):
  total, n = 0.0, 0.0
  for b in range(logits.shape[0]):
    for s in range(logits.shape[1]):
      if not weights[b, s]:
        continue
      q = np.exp(vals[b, s] / t - np.max(vals[b, s] / t))
      q = q / q.sum()
      ls = _np_log_softmax(logits[b, s] / t)
      total += -sum(q[j] * ls[ids[b, s, j]] for j in range(ids.shape[-1]) if q[j] > 0)
      n += 1
  return t * t * total / n


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_sparse_kd_equals_numpy(t):
  logits, teacher, targets, weights = _case()
  lp = _np_log_softmax(teacher)
  ids = np.argsort(-lp, -1)[..., :4].astype(np.int32)
  vals = np.take_along_axis(lp, ids, -1)
  got = losses.sparse_kd(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(vals),
                         jnp.asarray(weights), temperature=t)
  np.testing.assert_allclose(float(got), _np_sparse_kd(logits, ids, vals, weights, t), rtol=1e-5)


def test_topk_targets_are_the_teachers_top_logprobs():
  _, teacher, _, _ = _case()
  ids, vals = losses.topk_targets(jnp.asarray(teacher), 5)
  lp = _np_log_softmax(teacher)
  want = np.argsort(-lp, -1)[..., :5]
  np.testing.assert_array_equal(np.asarray(ids), want)
  np.testing.assert_allclose(np.asarray(vals), np.take_along_axis(lp, want, -1), rtol=1e-5)


def test_topk_with_all_ids_is_full_kd():
  logits, teacher, _, weights = _case()
  ids, vals = losses.topk_targets(jnp.asarray(teacher), teacher.shape[-1])
  sparse = losses.sparse_kd(jnp.asarray(logits), ids, vals, jnp.asarray(weights), 2.0)
  full, kl = losses.full_kd(jnp.asarray(logits), jnp.asarray(teacher), jnp.asarray(weights), 2.0)
  np.testing.assert_allclose(float(sparse), float(full), rtol=1e-5)
  # KL = CE/T^2 - H(p_T), by NumPy.
  lp = _np_log_softmax(teacher / 2.0)
  ls = _np_log_softmax(logits / 2.0)
  kl_np = (np.exp(lp) * (lp - ls)).sum(-1)
  np.testing.assert_allclose(float(kl), (kl_np * weights).sum() / weights.sum(), rtol=1e-5)


def test_hard_ce_and_mix_equal_numpy():
  logits, teacher, targets, weights = _case(1)
  ls = _np_log_softmax(logits)
  nll = -np.take_along_axis(ls, targets[..., None], -1)[..., 0]
  hard_np = (nll * weights).sum() / weights.sum()
  lp = _np_log_softmax(teacher)
  ids = np.argsort(-lp, -1)[..., :3].astype(np.int32)
  vals = np.take_along_axis(lp, ids, -1)
  loss, m = losses.distill_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                hard_weight=0.3, temperature=1.5, ids=jnp.asarray(ids),
                                values=jnp.asarray(vals))
  want = 0.3 * hard_np + 0.7 * _np_sparse_kd(logits, ids, vals, weights, 1.5)
  np.testing.assert_allclose(float(m["hard_ce"]), hard_np, rtol=1e-5)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_sampled_targets_merge_duplicates_and_are_unbiased():
  rng = np.random.default_rng(3)
  teacher = (rng.normal(size=(1, 1, 7)) * 1.5).astype(np.float32)
  p = np.exp(_np_log_softmax(teacher))[0, 0]
  n, trials = 6, 4000
  keys = jax.random.split(jax.random.key(0), trials)
  ids, vals = jax.vmap(lambda k: losses.sampled_targets(k, jnp.asarray(teacher), n))(keys)
  ids, vals = np.asarray(ids)[:, 0, 0], np.asarray(vals)[:, 0, 0]
  est = np.zeros((trials, 7))
  for t in range(trials):
    valid = np.isfinite(vals[t])
    assert len(set(ids[t][valid])) == valid.sum()             # distinct ids per slot
    np.add.at(est[t], ids[t][valid], np.exp(vals[t][valid]))
  np.testing.assert_allclose(est.sum(1), 1.0, rtol=1e-5)
  # p_hat = counts / n, so its mean over trials is p within Monte-Carlo error.
  se = np.sqrt(p * (1 - p) / n / trials)
  assert np.all(np.abs(est.mean(0) - p) < 5 * se + 1e-6), (est.mean(0), p)


def test_sampled_kd_gradient_is_unbiased_but_topk_is_not():
  """E over draws of the sampled-k loss equals full KD; top-k renormalisation differs."""
  rng = np.random.default_rng(4)
  teacher = (rng.normal(size=(1, 1, 9)) * 1.0).astype(np.float32)
  logits = jnp.asarray(rng.normal(size=(1, 1, 9)).astype(np.float32))
  w = jnp.ones((1, 1))
  full, _ = losses.full_kd(logits, jnp.asarray(teacher), w)
  keys = jax.random.split(jax.random.key(1), 1500)

  def one(k):
    ids, vals = losses.sampled_targets(k, jnp.asarray(teacher), 4)
    return losses.sparse_kd(logits, ids, vals, w, tempered=False)
  mc = jax.vmap(one)(keys)
  assert abs(float(mc.mean()) - float(full)) < 4 * float(mc.std()) / np.sqrt(1500)
  ids, vals = losses.topk_targets(jnp.asarray(teacher), 2)
  topk = losses.sparse_kd(logits, ids, vals, w)
  assert abs(float(topk) - float(full)) > 8 * float(mc.std()) / np.sqrt(1500)


def test_importance_weights_with_a_tempered_proposal():
  """tau > 1: weights p/q; one draw of each id (n large) recovers p after normalising."""
  teacher = jnp.log(jnp.asarray([[[0.7, 0.2, 0.1]]], jnp.float32))
  ids, vals = losses.sampled_targets(jax.random.key(2), teacher, 2000, proposal_temperature=3.0)
  est = np.zeros(3)
  ids, vals = np.asarray(ids)[0, 0], np.asarray(vals)[0, 0]
  ok = np.isfinite(vals)
  np.add.at(est, ids[ok], np.exp(vals[ok]))
  np.testing.assert_allclose(est, [0.7, 0.2, 0.1], atol=0.04)
