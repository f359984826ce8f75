"""Audio encoder: 16 kHz waveform -> log-mel (in JAX) -> 2 stride-2 convs -> transformer -> d_model.

    audio f32 [N,L] ─log_mel─▶ [N,F,M]  F = L // hop (one frame per 10 ms hop)
      ─conv1 (k=Kc, stride 2) + gelu─▶ [N,ceil(F/2),Da] ─conv2 (stride 2) + gelu─▶ [N,F',Da]
      ─+ sinusoidal positions─▶ encoder blocks, final_norm ─@ proj─▶ [N,F',D]
    F' = ceil(ceil(F/2)/2): 25 tokens per second of 16 kHz audio.

Log-mel (matched by audio_reference.log_mel_reference to 1e-4):
  frame i = samples [i*hop - (n_fft-hop)/2, ... + n_fft) of the zero-padded waveform, so each
  frame is centred on its own hop; window = periodic Hann of win_length, centred in n_fft;
  power = |rfft(frame * window)|^2; mel = power @ filterbank (HTK mel scale, n_mels triangles
  between 0 Hz and sample_rate/2, peak 1, no area normalisation); log(max(mel, 1e-10)).
Features enter the conv stack unnormalised (the first conv learns the scale).
All clips in one batch have the same length L (pad shorter clips with zeros).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import AudioConfig, ModelConfig
from gemini.model import encoder

LOG_FLOOR = 1e-10


def num_frames(num_samples: int, acfg: AudioConfig) -> int:
  return num_samples // acfg.hop_length


def audio_num_tokens(num_samples: int, acfg: AudioConfig) -> int:
  """Tokens one clip of num_samples samples becomes (two stride-2 convs)."""
  return math.ceil(math.ceil(num_frames(num_samples, acfg) / 2) / 2)


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(acfg: AudioConfig) -> np.ndarray:
  """f32 [n_fft//2 + 1, n_mels]: HTK-scale triangles (peak 1) over the rfft bin frequencies."""
  bins = np.arange(acfg.n_fft // 2 + 1) * acfg.sample_rate / acfg.n_fft
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(acfg.sample_rate / 2), acfg.n_mels + 2))
  lo, mid, hi = edges[:-2][None], edges[1:-1][None], edges[2:][None]
  rise = (bins[:, None] - lo) / (mid - lo)
  fall = (hi - bins[:, None]) / (hi - mid)
  return np.maximum(0.0, np.minimum(rise, fall)).astype(np.float32)


def hann_window(acfg: AudioConfig) -> np.ndarray:
  """f32 [n_fft]: periodic Hann of win_length, zero-padded to n_fft, centred."""
  n = np.arange(acfg.win_length)
  w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / acfg.win_length)
  left = (acfg.n_fft - acfg.win_length) // 2
  out = np.zeros(acfg.n_fft)
  out[left:left + acfg.win_length] = w
  return out.astype(np.float32)


def log_mel(audio: jax.Array, acfg: AudioConfig) -> jax.Array:
  """audio f32 [N,L] (16 kHz, ~[-1,1]) -> log-mel f32 [N, L // hop, n_mels]."""
  if audio.ndim != 2:
    raise ValueError(f"audio: expected waveforms [N,samples], got shape {tuple(audio.shape)}")
  if acfg.win_length > acfg.n_fft:
    raise ValueError(f"audio: win_length={acfg.win_length} > n_fft={acfg.n_fft}")
  n, length = audio.shape
  frames, hop, n_fft = num_frames(length, acfg), acfg.hop_length, acfg.n_fft
  if frames < 1:
    raise ValueError(f"audio: clip of {length} samples is shorter than hop_length={hop}")
  left = (n_fft - hop) // 2
  right = max(0, (frames - 1) * hop + n_fft - left - length)
  x = jnp.pad(audio.astype(jnp.float32), ((0, 0), (left, right)))
  idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]     # [F, n_fft]
  spec = jnp.fft.rfft(x[:, idx] * jnp.asarray(hann_window(acfg)), axis=-1)
  power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
  mel = jnp.einsum("nfk,km->nfm", power, jnp.asarray(mel_filterbank(acfg)),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
  """f32 [length, width]: [sin(p * w_i), cos(p * w_i)] halves, w_i = 10000^(-i/(width/2 - 1))."""
  half = width // 2
  inv = np.exp(-math.log(10000.0) * np.arange(half) / max(half - 1, 1))
  ang = np.arange(length)[:, None] * inv[None, :]
  out = np.zeros((length, width), np.float32)
  out[:, :half], out[:, half:2 * half] = np.sin(ang), np.cos(ang)
  return out


def _conv_stride2(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """x [N,F,Cin], w [K,Cin,Cout] -> [N, ceil(F/2), Cout]; 'same'-style padding."""
  k = w.shape[0]
  lo = (k - 1) // 2
  y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(2,),
                                   padding=[(lo, k - 1 - lo)],
                                   dimension_numbers=("NWC", "WIO", "NWC"))
  return jax.nn.gelu(y + b.astype(x.dtype), approximate=True)


def encode_audio(params: dict, audio: jax.Array, acfg: AudioConfig,
                 dtype=jnp.float32) -> jax.Array:
  """params = the audio/ tree; audio f32 [N,L] -> [N, audio_num_tokens(L), D] in `dtype`."""
  x = log_mel(audio, acfg).astype(dtype)
  x = _conv_stride2(x, params["conv1"], params["conv1_bias"])
  x = _conv_stride2(x, params["conv2"], params["conv2_bias"])
  x = x + jnp.asarray(sinusoidal_positions(x.shape[1], x.shape[2]), dtype)
  x = encoder.encode(params["layers"], params["final_norm"], x)
  return x @ params["proj"].astype(dtype)


def audio_tokens(params: dict, audio: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Full-model entry: audio [N,L] -> [N, audio_num_tokens(L), d_model] in cfg.dtype."""
  return encode_audio(params["audio"], audio, cfg.audio, jnp.dtype(cfg.dtype))
