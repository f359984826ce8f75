"""Activation-aware int4 scaling (AWQ-style, Lin et al. 2023), folded into the float model.

Input channels that see large activations matter more, so before rounding we scale weight
row k by s_k and divide the activation by s_k, which leaves the float model unchanged:
  attn/wq,wk,wv rows *= s   and  attn_norm.scale /= s      (site '<i>/attn')
  mlp/w_gate,w_up rows *= s and  mlp_norm.scale /= s       (site '<i>/mlp')
  mlp/w_down rows *= s      and  mlp/w_up columns /= s     (site '<i>/w_down')
with s = mean|x|^alpha (normalised to geometric mean 1), alpha picked per site on a grid to
minimise the int4 output error on calibration activations. (wo, whose input is the
attention output, keeps plain rounding.)
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.quant import int4
from gemini.quant import int4_forward

_SITES = {"attn": (("attn", "wq"), ("attn", "wk"), ("attn", "wv")),
          "mlp": (("mlp", "w_gate"), ("mlp", "w_up")),
          "w_down": (("mlp", "w_down"),)}


def _matrix(w) -> jnp.ndarray:
  return jnp.asarray(w, jnp.float32).reshape(w.shape[0], -1)


def _int4_roundtrip(w: jnp.ndarray, group_size: int, scale_dtype: str) -> jnp.ndarray:
  return int4.dequantize(int4.quantize(w, group_size, scale_dtype))


def search_scale(x: jnp.ndarray, weights, group_size: int, scale_dtype: str,
                 grid: int = 11) -> jnp.ndarray:
  """Best per-channel scale s [K] for activations x [M, K] feeding matrices [K, N_i]."""
  a = jnp.mean(jnp.abs(x), axis=0) + 1e-8
  ref = [x @ w for w in weights]
  best, best_err = jnp.ones_like(a), None
  for alpha in np.linspace(0.0, 1.0, grid):
    s = a ** alpha
    s = s / jnp.sqrt(jnp.max(s) * jnp.min(s))
    err = sum(float(jnp.sum((x @ (_int4_roundtrip(w * s[:, None], group_size, scale_dtype)
                                  / s[:, None]) - r) ** 2)) for w, r in zip(weights, ref))
    if best_err is None or err < best_err:
      best, best_err = s, err
  return best


def calibrate(params: dict, cfg: ModelConfig, tokens: jax.Array, *, group_size: int = 32,
              scale_dtype: str = "float16", grid: int = 11) -> Dict[str, jax.Array]:
  """Scales {'<i>/attn': [D], '<i>/mlp': [D], '<i>/w_down': [F]} from calibration tokens
  int32 [B, S] run through the float model."""
  _, _, acts = int4_forward.forward(params, tokens, cfg, collect=True)
  out = {}
  for i, lp in enumerate(params["layers"]):
    for site, leaves in _SITES.items():
      x = acts[f"{i}/{site}"].reshape(-1, acts[f"{i}/{site}"].shape[-1])
      out[f"{i}/{site}"] = search_scale(x, [_matrix(lp[a][b]) for a, b in leaves], group_size,
                                        scale_dtype, grid)
  return out


def apply_scales(params: dict, cfg: ModelConfig, scales: Dict[str, jax.Array]) -> dict:
  """The float tree with the scales folded in (an exactly equivalent float model)."""
  layers = []
  for i, lp in enumerate(params["layers"]):
    s_attn, s_mlp, s_down = (scales[f"{i}/{k}"] for k in ("attn", "mlp", "w_down"))
    rows = lambda w, s: jnp.asarray(w, jnp.float32) * s.reshape((-1,) + (1,) * (w.ndim - 1))
    attn = dict(lp["attn"])
    for n in ("wq", "wk", "wv"):
      attn[n] = rows(attn[n], s_attn)
    mlp = {"w_gate": rows(lp["mlp"]["w_gate"], s_mlp),
           "w_up": rows(lp["mlp"]["w_up"], s_mlp) / s_down[None, :],
           "w_down": rows(lp["mlp"]["w_down"], s_down)}
    layers.append({**lp, "attn": attn, "mlp": mlp,
                   "attn_norm": {"scale": lp["attn_norm"]["scale"] / s_attn},
                   "mlp_norm": {"scale": lp["mlp_norm"]["scale"] / s_mlp}})
  return {**params, "layers": layers}
