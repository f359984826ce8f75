"""Per-row sampling for a batch of independent requests (one jitted shape for every mix).

Each row has its own temperature, top-k, top-p, seed and token counter; its PRNG key is
fold_in(key(seed), counter), so a request's samples depend only on its own seed and on how many
tokens it has produced, never on what else is in the batch. A token mask (a constraint's
allowed set, packed 32 tokens per int32 word as llguidance writes it) and a forced token
(thinking budget spent, fast-forwarded grammar tokens) override the distribution per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30


def unpack_mask(bits: jax.Array, vocab: int) -> jax.Array:
  """bits int32 [B, ceil(V/32)] (bit j of word w = token 32w+j allowed) -> bool [B,V]."""
  shifts = jnp.arange(32, dtype=jnp.uint32)
  words = bits.astype(jnp.uint32)[:, :, None]
  allowed = ((words >> shifts) & 1).astype(bool).reshape(bits.shape[0], -1)
  return allowed[:, :vocab]


def full_mask_words(vocab: int) -> int:
  return (vocab + 31) // 32


def all_allowed(batch: int, vocab: int) -> np.ndarray:
  return np.full((batch, full_mask_words(vocab)), -1, np.int32)


def _filter_row(lg, top_k, top_p):
  """One row's logits [V] with top-k (0 = off) and top-p (1 = off) applied."""
  srt = jnp.sort(lg)[::-1]
  kth = srt[jnp.clip(top_k - 1, 0, lg.shape[0] - 1)]
  lg = jnp.where((top_k > 0) & (lg < kth), NEG, lg)
  srt = jnp.where((top_k > 0) & (srt < kth), NEG, srt)
  probs = jax.nn.softmax(srt)
  mass_before = jnp.cumsum(probs) - probs
  thresh = jnp.min(jnp.where(mass_before < top_p, srt, jnp.inf))
  return jnp.where((top_p < 1.0) & (lg < thresh), NEG, lg)


def sample_rows(logits, temperature, top_k, top_p, seeds, counters, mask_bits, forced):
  """logits f32 [B,V]; temperature/top_p f32 [B]; top_k, counters, forced int32 [B];
  seeds uint32 [B]; mask_bits int32 [B,W] -> tokens int32 [B]. temperature <= 0 is greedy;
  forced >= 0 replaces the sample."""
  vocab = logits.shape[-1]
  allowed = unpack_mask(mask_bits, vocab)
  lg = jnp.where(allowed, logits.astype(jnp.float32), NEG)
  greedy = jnp.argmax(lg, axis=-1).astype(jnp.int32)

  def one(filtered):
    def draw(row, t, k, p, seed, count):
      key = jax.random.fold_in(jax.random.key(seed), count)
      row = row / jnp.maximum(t, 1e-6)
      if filtered:
        row = _filter_row(row, k, p)
      return jax.random.categorical(key, row).astype(jnp.int32)
    return lambda: jax.vmap(draw)(lg, temperature, top_k, top_p, seeds, counters)

  # Batch-level branches: an all-greedy batch never sorts the vocabulary, and top-k/top-p
  # sorting runs only when some row asks for it (a row's result is the same either way).
  filtering = jnp.any((top_k > 0) | (top_p < 1.0))
  sampled = jax.lax.cond(
      jnp.any(temperature > 0),
      lambda: jax.lax.cond(filtering, one(True), one(False)),
      lambda: greedy)
  tok = jnp.where(temperature > 0, sampled, greedy)
  return jnp.where(forced >= 0, forced, tok)
