"""A `.gnb` file's tensors as the JAX model's int4 parameter tree, so the JAX backend serves an
exported file through `Int4Weight` and the one `dense` (the inverse of
`gemini.export.gnb.model_tensors`; the file format is py/gemini/export/FORMAT.md).

    file int4 tensor [N, K] (row-major nibbles, ceil(K/g) scales per row)
      ─q.T, zero rows up to Kp = padded_k(K, g); scales.T, zero groups up to Kp/g─▶ pack ─▶
      Int4Weight(packed [Kp/2, N], scales [Kp/g, N], K, g)      (one layer's int4 view)
    file f32 tensor ─reshape to the Param's layer shape─▶ f32 leaf
    layers of a stacked Param ─stack on a leading [R] axis─▶ the tree leaf

Padding rows of a quantised matrix are zero with zero scales, exactly what
`pallas.int4_matmul.weight.quantize` produces, so a file exported from
`quantize_params(params)` reads back to that same tree bit for bit.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import jax.numpy as jnp
import numpy as np

from gemini.config import ModelConfig
from gemini.export import gnb
from gemini.model import spec
from pallas.int4_matmul.weight import Int4Weight, pack, padded_k


def _int4_leaf(t: gnb.Tensor) -> Int4Weight:
  q, scales = gnb.int4_from_tensor(t)                 # [N, K] int8, [N, ceil(K/g)] f32
  n, k = t.shape
  g = t.group_size
  kp = padded_k(k, g)
  qv = np.zeros((kp, n), np.int8)
  qv[:k] = q.T
  dt = jnp.float16 if t.dtype == gnb.INT4_F16 else jnp.bfloat16
  sc = np.zeros((kp // g, n), np.float32)
  sc[:scales.shape[1]] = scales.T
  return Int4Weight(pack(jnp.asarray(qv)), jnp.asarray(sc).astype(dt), k, g)


def _f32_leaf(t: gnb.Tensor, shape, name: str) -> np.ndarray:
  if t.dtype != gnb.F32:
    raise ValueError(f".gnb tensor {name!r} has dtype {gnb.DTYPE_NAMES.get(t.dtype, t.dtype)}; "
                     "expected f32 or int4")
  a = np.frombuffer(t.data, np.float32)
  if a.size != int(np.prod(shape)):
    raise ValueError(f".gnb tensor {name!r} has {a.size} values; the model wants shape {shape}")
  return a.reshape(shape).copy()


def _stack(leaves: List[object]):
  if isinstance(leaves[0], Int4Weight):
    w = leaves[0]
    return Int4Weight(jnp.stack([x.packed for x in leaves]), jnp.stack([x.scales for x in leaves]),
                      w.k, w.group_size)
  return np.stack(leaves)


def params_from_gnb(f: gnb.GnbFile, dtype: str = "float32") -> Tuple[dict, ModelConfig]:
  """(int4 params tree, the dense decoder config of the file with compute `dtype`)."""
  cfg = gnb.model_config(f.config).replace(dtype=dtype)
  per: Dict[tuple, Dict[tuple, object]] = {}
  params: Dict[tuple, spec.Param] = {}
  for name, p, index in spec.decoder_exports(cfg):
    t = f.tensors.get(name)
    if t is None:
      raise ValueError(f".gnb has no tensor {name!r} (config {cfg.name!r})")
    if t.dtype in (gnb.INT4_F16, gnb.INT4_BF16):
      if p.k_axes is None:
        raise ValueError(f".gnb tensor {name!r} is int4 but {p.name} is not a matrix")
      want = spec.gguf_shape(p)
      if tuple(t.shape) != want:
        raise ValueError(f".gnb tensor {name!r} has int4 shape {tuple(t.shape)}; the model "
                         f"wants [N, K] = {list(want)}")
      leaf = _int4_leaf(t)
    else:
      leaf = _f32_leaf(t, p.layer_shape, name)
    per.setdefault(p.path, {})[index] = leaf
    params[p.path] = p
  leaves = {}
  for path, p in params.items():
    got = per[path]
    leaves[path] = _stack([got[k] for k in sorted(got)]) if p.stacked else got[()]
  return spec.build_tree(list(params.values()), lambda p: leaves[p.path]), cfg
