"""Turn a float params tree (the `gemini.family` tree) into an int4 params tree.

The int4 tree has the same keys; every matrix leaf becomes an `Int4Weight` of its matrix
view W[K, N] (K = the input features of the matmul it feeds):
  attn/wq, wk, wv [D, H|K, Dh] -> [D, H*Dh | K*Dh];  attn/wo [H, Dh, D] -> [H*Dh, D]
  mlp/w_gate, w_up [D, F];  mlp/w_down [F, D];  unembed [D, V]
  embed/tokens [V, D] -> its transpose [D, V] (tied logits are x @ E^T; lookups read columns)
Norm scales stay f32 vectors. Only dense text decoders are supported (what ships on device).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.quant import int4


def matrix_view(name: str, w) -> jnp.ndarray:
  """The [K, N] matrix the leaf `name` (e.g. 'wq', 'w_down', 'embed') multiplies from the left."""
  if name in ("wq", "wk", "wv"):
    return w.reshape(w.shape[0], -1)
  if name == "wo":
    return w.reshape(-1, w.shape[-1])
  if name == "embed":
    return w.T
  return w


def expected_shapes(cfg: ModelConfig) -> dict:
  """{path: shape} of the dense text-decoder tree for cfg (paths like 'layers/0/attn/wq')."""
  d, h, k, dh, f, v = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                       cfg.vocab_size)
  out = {"embed/tokens": (v, d), "final_norm/scale": (d,)}
  for i in range(cfg.n_layers):
    out.update({f"layers/{i}/attn_norm/scale": (d,), f"layers/{i}/attn/wq": (d, h, dh),
                f"layers/{i}/attn/wk": (d, k, dh), f"layers/{i}/attn/wv": (d, k, dh),
                f"layers/{i}/attn/wo": (h, dh, d), f"layers/{i}/mlp_norm/scale": (d,),
                f"layers/{i}/mlp/w_gate": (d, f), f"layers/{i}/mlp/w_up": (d, f),
                f"layers/{i}/mlp/w_down": (f, d)})
  if not cfg.tie_embeddings:
    out["unembed"] = (d, v)
  return out


def check_supported(params: dict, cfg: ModelConfig):
  """Raises ValueError unless params is exactly the dense text-only decoder tree of cfg."""
  if cfg.moe.enabled:
    raise ValueError(f"int4 export/runtime: config {cfg.name!r} is MoE; only dense decoders")
  for key in ("vision", "audio"):
    if key in params:
      raise ValueError(f"int4 export/runtime: params have '{key}'; text-only decoders only")
  n = len(params.get("layers", []))
  if n != cfg.n_layers:
    raise ValueError(f"params have {n} layers but config {cfg.name!r} has n_layers={cfg.n_layers}")
  for path, shape in expected_shapes(cfg).items():
    node = params
    for part in path.split("/"):
      node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
      if node is None:
        raise ValueError(f"params have no '{path}' (config {cfg.name!r})")
    if tuple(node.shape) != shape:
      raise ValueError(f"params '{path}' has shape {tuple(node.shape)} but config {cfg.name!r} "
                       f"needs {shape}")


def quantize_params(params: dict, cfg: ModelConfig, *, group_size: int = 32,
                    scale_dtype: str = "float16", awq_scales: Optional[dict] = None) -> dict:
  """Float family tree -> int4 tree (see module doc).

  awq_scales: optional output of `gemini.quant.awq.calibrate`; when given, the equivalent
  activation-aware rescaling is folded into the float weights before rounding.
  """
  check_supported(params, cfg)
  if awq_scales is not None:
    from gemini.quant import awq  # Lazy: plain rounding needs no calibration code.
    params = awq.apply_scales(params, cfg, awq_scales)
  quant = jax.jit(int4.quantize, static_argnums=(1, 2))  # one compile per matrix shape
  q = lambda name, w: quant(matrix_view(name, jnp.asarray(w, jnp.float32)), group_size,
                            scale_dtype)
  layers = []
  for lp in params["layers"]:
    layers.append({
        "attn_norm": {"scale": jnp.asarray(lp["attn_norm"]["scale"], jnp.float32)},
        "attn": {n: q(n, lp["attn"][n]) for n in ("wq", "wk", "wv", "wo")},
        "mlp_norm": {"scale": jnp.asarray(lp["mlp_norm"]["scale"], jnp.float32)},
        "mlp": {n: q(n, lp["mlp"][n]) for n in ("w_gate", "w_up", "w_down")},
    })
  out = {"embed": {"tokens": q("embed", params["embed"]["tokens"])},
         "layers": layers,
         "final_norm": {"scale": jnp.asarray(params["final_norm"]["scale"], jnp.float32)}}
  if not cfg.tie_embeddings:
    out["unembed"] = q("unembed", params["unembed"])
  return out
