"""Turn a float params tree into an int4 params tree, leaf by leaf from gemini.model.spec.

The int4 tree has the same paths; every leaf the spec marks as a matrix (`Param.k_axes`)
becomes an `Int4Weight` of its int4 view W[K, N] (stacked layer leaves: packed/scales with
the leading [R] axis, one quantisation per layer); norm scales stay f32. The same
`gemini.model.transformer.forward` / `decode` run both trees. Only dense text decoders are
supported (what ships on device).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import spec
from gemini.quant import awq, int4


def check_supported(params: dict, cfg: ModelConfig):
  """Raises ValueError unless params is exactly the dense text-only decoder tree of cfg."""
  if cfg.moe.enabled:
    raise ValueError(f"int4 export/runtime: config {cfg.name!r} is MoE; only dense decoders")
  for key in ("vision", "audio"):
    if key in params or getattr(cfg, key).enabled:
      raise ValueError(f"int4 export/runtime: '{key}' is present; text-only decoders only")
  spec.check_tree(params, cfg)


def quantize_leaf(p: spec.Param, w, group_size: int, scale_dtype: str) -> int4.Int4Weight:
  """One spec leaf (stacked or not) -> Int4Weight of its int4 view."""
  q = lambda m: int4.quantize(spec.matrix_view(p, m), group_size, scale_dtype)
  w = jnp.asarray(w, jnp.float32)
  if p.stacked:
    return jax.jit(jax.vmap(q))(w)
  return jax.jit(q)(w)


def quantize_params(params: dict, cfg: ModelConfig, *, group_size: int = 32,
                    scale_dtype: str = "float16", awq_scales: Optional[dict] = None) -> dict:
  """Float tree -> int4 tree (see module doc).

  awq_scales: optional output of `gemini.quant.awq.calibrate`; when given, the equivalent
  activation-aware rescaling is folded into the float weights before rounding.
  """
  check_supported(params, cfg)
  if awq_scales is not None:
    params = awq.apply_scales(params, cfg, awq_scales)
  out = params
  for p in spec.param_spec(cfg):
    w = spec.get(params, p.path)
    leaf = (quantize_leaf(p, w, group_size, scale_dtype) if p.k_axes is not None
            else jnp.asarray(w, jnp.float32))
    out = spec.replace(out, p.path, leaf)
  return out
