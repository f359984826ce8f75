"""NumPy float64 reference for audio.log_mel, written independently (per-frame loop, explicit
per-filter triangle construction) so the test compares two different derivations."""

import numpy as np

from gemini.config import AudioConfig


def _mel(f):
  return 2595.0 * np.log10(1.0 + f / 700.0)


def _hz(m):
  return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def filterbank_reference(acfg: AudioConfig) -> np.ndarray:
  """float64 [n_fft//2 + 1, n_mels], one triangle at a time."""
  n_bins = acfg.n_fft // 2 + 1
  top = _mel(acfg.sample_rate / 2.0)
  points = [_hz(top * i / (acfg.n_mels + 1)) for i in range(acfg.n_mels + 2)]
  fb = np.zeros((n_bins, acfg.n_mels))
  for m in range(acfg.n_mels):
    lo, centre, hi = points[m], points[m + 1], points[m + 2]
    for k in range(n_bins):
      f = k * acfg.sample_rate / acfg.n_fft
      if lo < f <= centre:
        fb[k, m] = (f - lo) / (centre - lo)
      elif centre < f < hi:
        fb[k, m] = (hi - f) / (hi - centre)
  return fb


def log_mel_reference(wave: np.ndarray, acfg: AudioConfig) -> np.ndarray:
  """wave [L] -> float64 [L // hop, n_mels]."""
  wave = np.asarray(wave, np.float64)
  hop, n_fft, win = acfg.hop_length, acfg.n_fft, acfg.win_length
  window = np.zeros(n_fft)
  off = (n_fft - win) // 2
  for n in range(win):
    window[off + n] = np.sin(np.pi * n / win) ** 2       # periodic Hann, = 0.5 - 0.5 cos(2 pi n / win)
  fb = filterbank_reference(acfg)
  frames = len(wave) // hop
  out = np.zeros((frames, acfg.n_mels))
  for i in range(frames):
    start = i * hop + hop // 2 - n_fft // 2               # frame centred on its hop
    seg = np.zeros(n_fft)
    for j in range(n_fft):
      if 0 <= start + j < len(wave):
        seg[j] = wave[start + j]
    spec = np.fft.rfft(seg * window)
    out[i] = np.log(np.maximum(np.abs(spec) ** 2 @ fb, 1e-10))
  return out
