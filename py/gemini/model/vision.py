"""ViT image encoder: patches -> transformer -> average-pooled to a token count -> d_model.

    images f32 [N,H,W,C] (H = W = image_size, values as given, e.g. [0,1] or normalised)
      ─patchify (P x P, raster order; patch vector ordered (row, col, channel))─▶ [N,Np,P*P*C]
      ─@ patch_embed + patch_bias + pos_embed─▶ [N,Np,Dv] ─encoder blocks, final_norm─▶
      ─pool (pool_matrix)─▶ [N,T,Dv] ─@ proj─▶ [N,T,D]          T = tokens_per_image (or per frame)

Pooling to T tokens (the reports give 258 and 66 per frame, which are not squares): with
s = floor(sqrt(T)) and r = T - s^2, the first s^2 tokens are an s x s adaptive average pool
of the g x g patch grid (bin i spans rows [floor(i g/s), ceil((i+1) g/s))), and the r extra
tokens are means over r horizontal bands of the whole image (coarse global context). So
258 = 16x16 + 2 bands, 66 = 8x8 + 2 bands, 16 = 4x4. T may exceed the patch count (bins
then repeat patches). Params: the vision/ subtree of gemini.model.spec.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig, VisionConfig
from gemini.model import encoder


def _bins(n: int, parts: int):
  return [(math.floor(i * n / parts), math.ceil((i + 1) * n / parts)) for i in range(parts)]


def pool_matrix(grid: int, tokens: int) -> np.ndarray:
  """f32 [tokens, grid*grid]: row t averages the patches (raster order) pooled into token t."""
  if tokens < 1:
    raise ValueError(f"vision: tokens per image/frame must be >= 1, got {tokens}")
  s = math.isqrt(tokens)
  r = tokens - s * s
  w = np.zeros((tokens, grid, grid), np.float32)
  for i, (r0, r1) in enumerate(_bins(grid, s)):
    for j, (c0, c1) in enumerate(_bins(grid, s)):
      w[i * s + j, r0:r1, c0:c1] = 1.0
  for b, (r0, r1) in enumerate(_bins(grid, r) if r else []):
    w[s * s + b, r0:r1, :] = 1.0
  w = w.reshape(tokens, grid * grid)
  return w / w.sum(axis=1, keepdims=True)


def patchify(images: jax.Array, vcfg: VisionConfig) -> jax.Array:
  """[N,H,W,C] -> [N, Np, P*P*C] in raster patch order."""
  n, h, w, c = images.shape
  if (h, w, c) != (vcfg.image_size, vcfg.image_size, vcfg.channels):
    raise ValueError(f"vision: images have shape [N,H,W,C]={tuple(images.shape)}; config wants "
                     f"H=W=image_size={vcfg.image_size}, C=channels={vcfg.channels}")
  p, g = vcfg.patch_size, vcfg.image_size // vcfg.patch_size
  x = images.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, g * g, p * p * c)


def encode_images(params: dict, images: jax.Array, vcfg: VisionConfig, tokens: int,
                  dtype=jnp.float32) -> jax.Array:
  """params = the vision/ tree; images f32 [N,H,W,C] -> [N, tokens, D] in `dtype`."""
  x = patchify(images.astype(dtype), vcfg)
  x = x @ params["patch_embed"].astype(dtype) + params["patch_bias"].astype(dtype)
  x = x + params["pos_embed"].astype(dtype)
  x = encoder.encode(params["layers"], params["final_norm"], x)
  pool = jnp.asarray(pool_matrix(vcfg.image_size // vcfg.patch_size, tokens), dtype)
  x = jnp.einsum("tp,npw->ntw", pool, x)
  return x @ params["proj"].astype(dtype)


def image_tokens(params: dict, images: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Full-model entry: images [N,H,W,C] -> [N, tokens_per_image, d_model] in cfg.dtype."""
  return encode_images(params["vision"], images, cfg.vision, cfg.vision.tokens_per_image,
                       jnp.dtype(cfg.dtype))
