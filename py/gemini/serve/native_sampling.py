"""Per-row sampling in NumPy for the native backend (no JAX on its hot path).

The same controls and semantics as `sampling.sample_rows`: temperature <= 0 is greedy (the
first index among equal maxima), otherwise temperature, then top-k (0 = off), then top-p
(1 = off), then one draw; a token mask (int32 words, bit j of word w = token 32w+j allowed)
removes tokens before anything else and a forced token (>= 0) replaces the sample. A row's
random stream is NumPy's PCG64 seeded with (seed, counter), so its samples depend only on its
own seed and on how many tokens it has produced, never on what else is in the batch. (The
draws are not the JAX sampler's: the two backends have different weights anyway.)
"""

from __future__ import annotations

import numpy as np

NEG = np.float32(-1e30)


def unpack_mask(words: np.ndarray, vocab: int) -> np.ndarray:
  """int32 [W] -> bool [vocab] (the layout llguidance writes and sampling.unpack_mask reads)."""
  bits = np.unpackbits(np.ascontiguousarray(words, np.int32).view(np.uint8), bitorder="little")
  return bits[:vocab].astype(bool)


def filter_row(lg: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
  """One row's (already temperature-scaled) logits f32 [V] with top-k and top-p applied:
  tokens outside the kept set become NEG. Ties at the k-th value are all kept, as in JAX."""
  lg = lg.copy()
  if 0 < top_k < lg.size:
    kth = np.partition(lg, lg.size - top_k)[lg.size - top_k]
    lg[lg < kth] = NEG
  if top_p < 1.0:
    srt = np.sort(lg)[::-1]
    probs = np.exp(srt - srt[0])
    probs /= probs.sum()
    mass_before = np.cumsum(probs) - probs
    thresh = srt[mass_before < top_p].min()
    lg[lg < thresh] = NEG
  return lg


def draw(lg: np.ndarray, seed: int, counter: int) -> int:
  """One sample from softmax(lg) with the (seed, counter) stream."""
  u = np.random.Generator(np.random.PCG64([int(seed), int(counter)])).random()
  p = np.exp((lg - lg.max()).astype(np.float64))
  c = np.cumsum(p)
  return int(min(np.searchsorted(c, u * c[-1], side="right"), lg.size - 1))


def sample_rows(logits, temperature, top_k, top_p, seeds, counters, mask_bits, forced,
                rows=None) -> np.ndarray:
  """logits f32 [B,V]; temperature/top_p f32 [B]; top_k, counters, forced int32 [B]; seeds
  uint32 [B]; mask_bits int32 [B,W] -> tokens int32 [B]. Only `rows` (default: all) are
  computed; the others are 0. Forced rows and unmasked greedy rows are done for the whole batch
  at once (one argmax over the rows); the rest row by row."""
  b, vocab = logits.shape
  out = np.zeros(b, np.int32)
  rows = np.arange(b) if rows is None else np.asarray(rows, np.int64)
  if rows.size == 0:
    return out
  is_forced = forced[rows] >= 0
  masked = (mask_bits[rows] != -1).any(axis=1)
  greedy = ~is_forced & ~masked & (temperature[rows] <= 0)
  g = rows[greedy]
  if g.size:
    hi = int(g.max()) + 1        # a view of the rows up to the last greedy one: no copy
    out[g] = np.argmax(logits[:hi], axis=1)[g]
  f = rows[is_forced]
  out[f] = forced[f]
  for i in rows[~greedy & ~is_forced].tolist():
    lg = logits[i]
    if (mask_bits[i] != -1).any():
      lg = np.where(unpack_mask(mask_bits[i], vocab), lg, NEG)
    if temperature[i] <= 0:
      out[i] = int(np.argmax(lg))
      continue
    lg = filter_row(lg.astype(np.float32) / np.float32(max(temperature[i], 1e-6)),
                    int(top_k[i]), float(top_p[i]))
    out[i] = draw(lg, seeds[i], counters[i])
  return out
