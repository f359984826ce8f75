"""Video: every frame through the image ViT (shared vision/ params), pooled per frame.

    video f32 [N,T,H,W,C] ─frames─▶ [N*T,H,W,C] ─vision.encode_images(tokens_per_frame)─▶
      [N*T, tpf, D] ─▶ [N, T*tpf, D]   (frame-major: frame 0's tokens, then frame 1's, ...)

tokens_per_frame comes from cfg.vision (66 by default, 258 as in Gemini 1.0/1.5; the pooling
rule for non-square counts is in vision.py).
"""

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import vision


def video_num_tokens(num_frames: int, cfg: ModelConfig) -> int:
  return num_frames * cfg.vision.tokens_per_frame


def video_tokens(params: dict, video: jax.Array, cfg: ModelConfig) -> jax.Array:
  """video f32 [N,T,H,W,C] -> [N, T*tokens_per_frame, d_model] in cfg.dtype."""
  if video.ndim != 5:
    raise ValueError(f"video: expected [N,T,H,W,C], got shape {tuple(video.shape)}")
  n, t = video.shape[:2]
  tpf = cfg.vision.tokens_per_frame
  out = vision.encode_images(params["vision"], video.reshape((n * t,) + video.shape[2:]),
                             cfg.vision, tpf, jnp.dtype(cfg.dtype))
  return out.reshape(n, t * tpf, cfg.d_model)
