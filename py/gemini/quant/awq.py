"""Activation-aware int4 scaling (AWQ-style, Lin et al. 2023), folded into the float model.

Input channels that see large activations matter more, so before rounding we scale weight
rows (input features) k of every matrix fed by a site by s_k and divide the site's absorber
by s_k along its last axis, which leaves the float model unchanged. Sites and absorbers come
from gemini.model.spec (`Param.site`, `Param.absorbs`): for a dense decoder layer
  site 'attn'    wq, wk, wv      absorbed by attn_norm.scale
  site 'mlp'     w_gate, w_up    absorbed by mlp_norm.scale
  site 'w_down'  w_down          absorbed by w_up's columns
(site 'wo', the attention output, has no absorber and keeps plain rounding). s = mean|x|^alpha
(normalised to geometric mean 1), alpha picked per site and layer on a grid to minimise the
int4 output error on calibration activations, which are recorded from the model's own
forward (`gemini.model.dense.Tapped`).
"""

from __future__ import annotations

import functools
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.model import dense, spec, transformer
from gemini.quant import int4


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


def _sites(cfg: ModelConfig):
  """{site: (matrix Params, absorber Params)} of the stacked decoder, scaled sites only."""
  out = {}
  layer = {p.path[2:]: p for p in spec.param_spec(cfg) if p.stacked and p.path[0] == "blocks"}
  for site, parts in spec.awq_sites(cfg).items():
    if parts["absorbers"]:
      out[site] = ([layer[m] for m in parts["matrices"]], [layer[a] for a in parts["absorbers"]])
  return out


def record_activations(params: dict, cfg: ModelConfig, tokens: jax.Array) -> Dict[str, List]:
  """{site: [x of layer 0, layer 1, ...]} (x [B*S, K] f32): the inputs of each site's first
  matrix, recorded from transformer.forward on calibration tokens int32 [B, S]."""
  if len(spec.block_pattern(cfg)) != 1:
    raise ValueError(f"awq: config {cfg.name!r} mixes layer kinds; dense decoders only")
  acts: Dict[str, List] = {}

  def sink(site, x):
    acts.setdefault(site, []).append(np.asarray(x, np.float32).reshape(-1, x.shape[-1]))

  tapped = params
  for site, (mats, _) in _sites(cfg).items():
    tapped = spec.replace(tapped, mats[0].path, dense.Tapped(spec.get(params, mats[0].path),
                                                             site, sink))
  f32 = cfg.replace(dtype="float32")
  jax.block_until_ready(transformer.forward(tapped, {"tokens": tokens}, f32)[0])
  jax.effects_barrier()
  return acts


def calibrate(params: dict, cfg: ModelConfig, tokens: jax.Array, *, group_size: int = 32,
              scale_dtype: str = "float16", grid: int = 11) -> Dict[str, jax.Array]:
  """Scales {site: [L, K]} (one row per decoder layer) from calibration tokens [B, S]."""
  acts = record_activations(params, cfg, tokens)
  out = {}
  for site, (mats, _) in _sites(cfg).items():
    rows = []
    for i, x in enumerate(acts[site]):
      weights = [spec.matrix_view(m, jnp.asarray(spec.get(params, m.path)[i], jnp.float32))
                 for m in mats]
      rows.append(search_scale(jnp.asarray(x), weights, group_size, scale_dtype, grid))
    out[site] = jnp.stack(rows)
  return out


def apply_scales(params: dict, cfg: ModelConfig, scales: Dict[str, jax.Array]) -> dict:
  """The float tree with the scales folded in (an exactly equivalent float model)."""
  out = params
  for site, (mats, absorbers) in _sites(cfg).items():
    s = jnp.asarray(scales[site], jnp.float32)                         # [L, K]
    for m in mats:   # input-feature axes lead each layer's shape (k_axes = (0,))
      w = jnp.asarray(spec.get(out, m.path), jnp.float32)
      out = spec.replace(out, m.path, w * s.reshape(s.shape + (1,) * (w.ndim - 2)))
    for a in absorbers:
      w = jnp.asarray(spec.get(out, a.path), jnp.float32)
      out = spec.replace(out, a.path, w / s.reshape((s.shape[0],) + (1,) * (w.ndim - 2)
                                                    + (s.shape[1],)))
  return out
