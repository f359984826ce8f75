"""GRPO and Bradley–Terry against NumPy versions on hand-made batches."""

import jax
import jax.numpy as jnp
import numpy as np

from gemini.posttrain import bradley_terry, grpo


def test_group_advantages_hand_made():
  r = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]], np.float32)
  got = np.asarray(grpo.group_advantages(jnp.asarray(r), eps=1e-4))
  # Row 0: mean .5, std .5 -> +-1; row 1: all equal -> 0; row 2: mean 2, std sqrt(.5).
  np.testing.assert_allclose(got[0], [1, -1, -1, 1], atol=1e-3)
  np.testing.assert_allclose(got[1], 0.0)
  np.testing.assert_allclose(got[2], np.array([1, -1, 0, 0]) / (np.sqrt(0.5) + 1e-4), rtol=1e-5)


def _np_grpo(logp, old, ref, adv, mask, eps, beta):
  per_seq = []
  kls = []
  for i in range(logp.shape[0]):
    terms, kl_terms = [], []
    for t in range(logp.shape[1]):
      if not mask[i, t]:
        continue
      rho = np.exp(logp[i, t] - old[i, t])
      clipped = min(max(rho, 1 - eps), 1 + eps)
      kl = np.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
      terms.append(min(rho * adv[i], clipped * adv[i]) - beta * kl)
      kl_terms.append(kl)
    per_seq.append(np.mean(terms))
    kls.append(np.mean(kl_terms))
  return -np.mean(per_seq), np.mean(kls)


def test_grpo_loss_equals_numpy():
  rng = np.random.default_rng(0)
  n, t = 4, 5
  old = np.log(rng.uniform(0.05, 0.9, size=(n, t))).astype(np.float32)
  logp = old + rng.normal(scale=0.4, size=(n, t)).astype(np.float32)   # some ratios clip
  ref = old + rng.normal(scale=0.2, size=(n, t)).astype(np.float32)
  adv = np.array([1.2, -0.7, 0.0, -1.5], np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 1, 0]], np.float32)
  loss, m = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref),
                           jnp.asarray(adv), jnp.asarray(mask), clip_eps=0.2, kl_beta=0.05)
  want, kl = _np_grpo(logp, old, ref, adv, mask, 0.2, 0.05)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5)
  assert 0 < float(m["clip_fraction"]) < 1


def test_grpo_gradient_on_policy_is_advantage_weighted_score():
  """At logp == old == ref the clip and KL terms have zero gradient: dJ/dlogp = A/|o|/N."""
  logp = jnp.log(jnp.full((2, 3), 0.5))
  adv = jnp.asarray([2.0, -1.0])
  mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.float32)
  g = jax.grad(lambda lp: grpo.grpo_loss(lp, logp, logp, adv, mask)[0])(logp)
  want = -np.array([[1, 1, 0], [1, 1, 1]]) * np.array([[2.0 / 2], [-1.0 / 3]]) / 2
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5)


def test_bradley_terry_equals_numpy():
  rc = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
  rr = np.array([1.0, 0.5, 0.5, -2.0], np.float32)
  loss, m = bradley_terry.bradley_terry_loss(jnp.asarray(rc), jnp.asarray(rr))
  want = np.mean(-np.log(1 / (1 + np.exp(-(rc - rr)))))
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert float(m["accuracy"]) == 0.5                      # ties do not count as correct


def test_bradley_terry_gradient_equals_numpy():
  rc = np.array([2.0, -1.0, 0.5, 3.0, 0.0], np.float32)
  rr = np.array([1.0, 0.5, 0.5, -2.0, 4.0], np.float32)
  w = np.array([1.0, 2.0, 0.0, 1.0, 1.0], np.float32)
  g_c, g_r = jax.grad(lambda a, b: bradley_terry.bradley_terry_loss(a, b, jnp.asarray(w))[0],
                      argnums=(0, 1))(jnp.asarray(rc), jnp.asarray(rr))
  # d/dr_c of sum_i w_i log(1 + exp(-(r_c - r_r))) / sum w = -w sigmoid(-(r_c - r_r)) / sum w.
  want = -w / (1 + np.exp(rc - rr)) / w.sum()
  np.testing.assert_allclose(np.asarray(g_c), want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g_r), -want, rtol=1e-5, atol=1e-7)
  loss, m = bradley_terry.bradley_terry_loss(jnp.asarray(rc), jnp.asarray(rr), jnp.asarray(w))
  np.testing.assert_allclose(float(loss), np.sum(w * np.log1p(np.exp(-(rc - rr)))) / w.sum(),
                             rtol=1e-6)
  assert abs(float(m["accuracy"]) - (1 + 1) / 5) < 1e-6       # rows 0 and 3 of weight 1 each


def test_grpo_gradient_with_stop_gradient_old_policy_equals_numpy():
  """The RL stage passes old = stop_gradient(logp) (one update per sample): the gradient is
  (A - beta (1 - pi_ref/pi)) / |o| / N per token, with the KL term away from the reference."""
  rng = np.random.default_rng(1)
  lp = np.log(rng.uniform(0.1, 0.9, (3, 4))).astype(np.float32)
  ref = (lp + rng.normal(scale=0.3, size=(3, 4))).astype(np.float32)
  adv = np.array([1.5, -0.5, 0.0], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  beta = 0.1
  g = jax.grad(lambda x: grpo.grpo_loss(x, jax.lax.stop_gradient(x), jnp.asarray(ref),
                                        jnp.asarray(adv), jnp.asarray(mask),
                                        kl_beta=beta)[0])(jnp.asarray(lp))
  dj = (adv[:, None] - beta * (1 - np.exp(ref - lp))) * mask / mask.sum(1, keepdims=True) / 3
  np.testing.assert_allclose(np.asarray(g), -dj, rtol=1e-4, atol=1e-7)
