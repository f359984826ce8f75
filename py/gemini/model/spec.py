"""The model spec: the one list of a config's parameters, and everything derived from it.

`param_spec(cfg)` returns one `Param` per array of the model: its path in the parameter tree,
stored shape, logical axes (for `gemini.sharding`), init, weight-decay flag, and how int4
quantisation, AWQ and the `.gnb` export see it. Init, sharding of params and optimizer state,
the decay mask, the family's parameter counts, the int4 quantiser, AWQ's sites, the `.gnb`
tensor order and the llama GGUF names and layouts (import and export) are all computed from
this list; no other file spells the tree out.

Decoder layers are stacked. The layer kinds (dense or MoE) repeat with a period p (the
smallest p dividing n_layers with kind(i) == kind(i mod p)); the decoder is R = n_layers / p
repetitions of a block of p layers, and `blocks/<j>` holds block position j of every
repetition stacked on a leading [R] axis (logical axis 'layers'): decoder layer i is
repetition i // p, position i % p. A dense or all-MoE model has p = 1 and one stack [L, ...].
The encoders' blocks are stacked the same way (`vision/layers`, `audio/layers`, [Le, ...]).

Tree (D=d_model, H=n_heads, K=n_kv_heads, Dh=head_dim, F=d_ff, V=vocab, E=experts, Fe=moe.d_ff):

    embed/tokens                                   [V, D]
    blocks/<j>/attn_norm/scale                     [R, D]
    blocks/<j>/attn/{wq [R,D,H,Dh], wk, wv [R,D,K,Dh], wo [R,H,Dh,D]}
    blocks/<j>/attn/{q_norm,k_norm}/scale          [R, Dh]          (cfg.qk_norm)
    blocks/<j>/mlp_norm/scale                      [R, D]
    blocks/<j>/mlp/{w_gate, w_up [R,D,F], w_down [R,F,D]}            dense positions
    blocks/<j>/moe/{router [R,D,E], w_gate, w_up [R,E,D,Fe], w_down [R,E,Fe,D]}  MoE positions
    final_norm/scale                               [D]
    unembed                                        [D, V]           (tie_embeddings=False)
    vision/{patch_embed, patch_bias, pos_embed, layers/<encoder block, stacked [Lv]>,
            final_norm/scale, proj}                                  (cfg.vision.enabled)
    audio/{conv1, conv1_bias, conv2, conv2_bias, layers/<encoder block, [La]>,
           final_norm/scale, proj}                                   (cfg.audio.enabled)
    encoder block: norm1/scale [W], attn/{wq,wk,wv [W,h,W/h], wo [h,W/h,W]}, norm2/scale [W],
                   mlp/{w_up [W,Fw], w_down [Fw,W]}

Int4 view (`Param.k_axes`): a matrix leaf W is used as x[..., K] @ W[K, N] with K the product of
the (per-layer) axes `k_axes` and N the product of the others, in order; the embedding's view
is its transpose [D, V] (tied logits are x @ E^T, lookups read its columns).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from gemini import sharding
from gemini.config import AudioConfig, ModelConfig, VisionConfig

Path = Tuple[Union[str, int], ...]


@dataclasses.dataclass(frozen=True)
class Param:
  """One array of the model.

  path: keys from the root (ints index lists); shape/axes: as stored, stacking axes first;
  init: 'normal' (times std), 'ones' or 'zeros'; decay: AdamW weight decay applies;
  k_axes: per-layer axes forming the int4 view's K (None: not a matrix, stays float);
  export: `.gnb` tensor name ('{i}' = decoder layer index; None: not exported);
  gguf: llama-architecture GGUF tensor name (None: llama has no such tensor); a GGUF matrix
  is the transpose of the int4 view, [N, K], and `rope` rows (wq, wk) are in llama.cpp's
  interleaved RoPE order per head (heads = layer_shape[1]);
  site: AWQ site whose activations feed this matrix; absorbs: AWQ site whose scale this
  parameter divides along its last axis (so the float model is unchanged);
  stacked: number of leading stacking axes (0 or 1)."""
  path: Path
  shape: Tuple[int, ...]
  axes: Tuple[Optional[str], ...]
  init: str = "normal"
  std: float = 1.0
  decay: bool = True
  k_axes: Optional[Tuple[int, ...]] = None
  export: Optional[str] = None
  gguf: Optional[str] = None
  rope: bool = False
  site: Optional[str] = None
  absorbs: Optional[str] = None
  stacked: int = 0

  @property
  def name(self) -> str:
    return "/".join(str(p) for p in self.path)

  @property
  def layer_shape(self) -> Tuple[int, ...]:
    return self.shape[self.stacked:]

  @property
  def size(self) -> int:
    return math.prod(self.shape)


def _p(path, shape, axes, **kw) -> Param:
  return Param(tuple(path), tuple(shape), tuple(axes), **kw)


def _normal(path, shape, axes, fan_in, **kw) -> Param:
  return _p(path, shape, axes, std=fan_in ** -0.5, **kw)


def _norm(path, dim, **kw) -> Param:
  return _p(tuple(path) + ("scale",), (dim,), ("norm",), init="ones", decay=False, **kw)


# --- the decoder layer -------------------------------------------------------------------


def _attention(cfg: ModelConfig) -> List[Param]:
  d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  out = [_normal(("attn", "wq"), (d, h, dh), ("embed", "heads", "head_dim"), d, k_axes=(0,),
                 export="layers.{i}.wq", gguf="blk.{i}.attn_q.weight", rope=True, site="attn"),
         _normal(("attn", "wk"), (d, k, dh), ("embed", "kv_heads", "head_dim"), d, k_axes=(0,),
                 export="layers.{i}.wk", gguf="blk.{i}.attn_k.weight", rope=True, site="attn"),
         _normal(("attn", "wv"), (d, k, dh), ("embed", "kv_heads", "head_dim"), d, k_axes=(0,),
                 export="layers.{i}.wv", gguf="blk.{i}.attn_v.weight", site="attn"),
         _normal(("attn", "wo"), (h, dh, d), ("heads", "head_dim", "embed"), h * dh,
                 k_axes=(0, 1), export="layers.{i}.wo", gguf="blk.{i}.attn_output.weight",
                 site="wo")]
  if cfg.qk_norm:
    out += [_norm(("attn", "q_norm"), dh, export="layers.{i}.q_norm"),
            _norm(("attn", "k_norm"), dh, export="layers.{i}.k_norm")]
  return out


def _mlp(cfg: ModelConfig) -> List[Param]:
  d, f = cfg.d_model, cfg.d_ff
  return [_normal(("mlp", "w_gate"), (d, f), ("embed", "mlp"), d, k_axes=(0,),
                  export="layers.{i}.w_gate", gguf="blk.{i}.ffn_gate.weight", site="mlp"),
          _normal(("mlp", "w_up"), (d, f), ("embed", "mlp"), d, k_axes=(0,),
                  export="layers.{i}.w_up", gguf="blk.{i}.ffn_up.weight", site="mlp",
                  absorbs="w_down"),
          _normal(("mlp", "w_down"), (f, d), ("mlp", "embed"), f, k_axes=(0,),
                  export="layers.{i}.w_down", gguf="blk.{i}.ffn_down.weight", site="w_down")]


def _moe(cfg: ModelConfig) -> List[Param]:
  d, e, f = cfg.d_model, cfg.moe.num_experts, cfg.moe.d_ff
  # The router starts small (std 0.02/sqrt(D)) so initial routing is near uniform.
  return [_p(("moe", "router"), (d, e), ("embed", None), std=0.02 * d ** -0.5),
          _normal(("moe", "w_gate"), (e, d, f), ("experts", "embed", "expert_mlp"), d),
          _normal(("moe", "w_up"), (e, d, f), ("experts", "embed", "expert_mlp"), d),
          _normal(("moe", "w_down"), (e, f, d), ("experts", "expert_mlp", "embed"), f)]


def decoder_layer(cfg: ModelConfig, moe: bool) -> List[Param]:
  """The parameters of one decoder layer (unstacked paths, relative to the layer)."""
  return ([_norm(("attn_norm",), cfg.d_model, export="layers.{i}.attn_norm",
                 gguf="blk.{i}.attn_norm.weight", absorbs="attn")]
          + _attention(cfg)
          + [_norm(("mlp_norm",), cfg.d_model, export="layers.{i}.mlp_norm",
                   gguf="blk.{i}.ffn_norm.weight", absorbs="mlp")]
          + (_moe(cfg) if moe else _mlp(cfg)))


def block_pattern(cfg: ModelConfig) -> Tuple[bool, ...]:
  """MoE flags of one repeating block of decoder layers (its length is the period p)."""
  kinds = [cfg.is_moe_layer(i) for i in range(cfg.n_layers)]
  for p in range(1, cfg.n_layers + 1):
    if cfg.n_layers % p == 0 and all(kinds[i] == kinds[i % p] for i in range(cfg.n_layers)):
      return tuple(kinds[:p])
  raise AssertionError("unreachable: p = n_layers always repeats")


def repeats(cfg: ModelConfig) -> int:
  """R: how many times the block of `block_pattern(cfg)` repeats."""
  return cfg.n_layers // len(block_pattern(cfg))


def _stack(params: Sequence[Param], prefix: Path, n: int, axis: str = "layers") -> List[Param]:
  return [dataclasses.replace(p, path=tuple(prefix) + p.path, shape=(n,) + p.shape,
                              axes=(axis,) + p.axes, stacked=1) for p in params]


# --- encoders ------------------------------------------------------------------------------


def _encoder_block(width: int, heads: int, hidden: int) -> List[Param]:
  if width % heads:
    raise ValueError(f"encoder: d_model={width} is not a multiple of n_heads={heads}")
  dh = width // heads
  return [_norm(("norm1",), width),
          _normal(("attn", "wq"), (width, heads, dh), ("embed", "heads", "head_dim"), width),
          _normal(("attn", "wk"), (width, heads, dh), ("embed", "heads", "head_dim"), width),
          _normal(("attn", "wv"), (width, heads, dh), ("embed", "heads", "head_dim"), width),
          _normal(("attn", "wo"), (heads, dh, width), ("heads", "head_dim", "embed"), width),
          _norm(("norm2",), width),
          _normal(("mlp", "w_up"), (width, hidden), ("embed", "mlp"), width),
          _normal(("mlp", "w_down"), (hidden, width), ("mlp", "embed"), hidden)]


def _encoder_layers(prefix: str, n: int, width: int, heads: int, hidden: int) -> List[Param]:
  return _stack(_encoder_block(width, heads, hidden), (prefix, "layers"), n)


def vision_params(v: VisionConfig, d_model: int) -> List[Param]:
  """The vision/ subtree for a decoder of width d_model."""
  if v.image_size % v.patch_size:
    raise ValueError(f"vision: image_size={v.image_size} is not a multiple of "
                     f"patch_size={v.patch_size}")
  pin, dv = v.patch_size * v.patch_size * v.channels, v.d_model
  return ([_normal(("vision", "patch_embed"), (pin, dv), (None, None), pin),
           _p(("vision", "patch_bias"), (dv,), (None,), init="zeros", decay=False),
           # Position embeddings are a table (rows of rarely-seen positions must not decay).
           _p(("vision", "pos_embed"), (v.num_patches, dv), (None, None), std=0.02, decay=False)]
          + _encoder_layers("vision", v.n_layers, dv, v.n_heads, v.d_ff)
          + [_norm(("vision", "final_norm"), dv),
             _normal(("vision", "proj"), (dv, d_model), (None, "embed"), dv)])


def audio_params(a: AudioConfig, d_model: int) -> List[Param]:
  """The audio/ subtree for a decoder of width d_model."""
  kc, m, da = a.conv_kernel, a.n_mels, a.d_model
  return ([_normal(("audio", "conv1"), (kc, m, da), (None, None, None), kc * m),
           _p(("audio", "conv1_bias"), (da,), (None,), init="zeros", decay=False),
           _normal(("audio", "conv2"), (kc, da, da), (None, None, None), kc * da),
           _p(("audio", "conv2_bias"), (da,), (None,), init="zeros", decay=False)]
          + _encoder_layers("audio", a.n_layers, da, a.n_heads, a.d_ff)
          + [_norm(("audio", "final_norm"), da),
             _normal(("audio", "proj"), (da, d_model), (None, "embed"), da)])


# --- the whole model -----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def param_spec(cfg: ModelConfig) -> Tuple[Param, ...]:
  """Every parameter of `cfg`, in `.gnb` export order for the decoder."""
  d, v = cfg.d_model, cfg.vocab_size
  # Embedding rows have std 1/sqrt(D), so tied logits of a unit-RMS x start at unit variance.
  # Not decayed: rows of rare tokens would shrink between their rare updates.
  out = [_p(("embed", "tokens"), (v, d), ("vocab", "embed"), std=d ** -0.5, decay=False,
            k_axes=(1,), export="embed", gguf="token_embd.weight")]
  r = repeats(cfg)
  for j, moe in enumerate(block_pattern(cfg)):
    out += _stack(decoder_layer(cfg, moe), ("blocks", j), r)
  out.append(_norm(("final_norm",), d, export="final_norm", gguf="output_norm.weight"))
  if not cfg.tie_embeddings:
    out.append(_normal(("unembed",), (d, v), ("embed", "vocab"), d, k_axes=(0,),
                       export="unembed", gguf="output.weight"))
  if cfg.vision.enabled:
    out += vision_params(cfg.vision, d)
  if cfg.audio.enabled:
    out += audio_params(cfg.audio, d)
  return tuple(out)


def num_params(params: Sequence[Param]) -> int:
  return sum(p.size for p in params)


# --- trees from the spec -------------------------------------------------------------------


def build_tree(params: Sequence[Param], leaf: Callable[[Param], object]) -> dict:
  """A nested dict/list tree with `leaf(p)` at each p.path (int keys make lists)."""
  root: dict = {}
  for p in params:
    node = root
    for key, nxt in zip(p.path[:-1], p.path[1:]):
      node = _child(node, key, list if isinstance(nxt, int) else dict)
    _put(node, p.path[-1], leaf(p))
  return root


def _child(node, key, kind):
  if isinstance(node, list):
    while len(node) <= key:
      node.append(None)
    if node[key] is None:
      node[key] = kind()
    return node[key]
  return node.setdefault(key, kind())


def _put(node, key, value):
  if isinstance(node, list):
    while len(node) <= key:
      node.append(None)
  node[key] = value


def get(tree, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def replace(tree, path: Path, value):
  """A copy of `tree` with the leaf at `path` replaced (containers on the path are copied)."""
  if not path:
    return value
  head, rest = path[0], path[1:]
  new = list(tree) if isinstance(tree, list) else dict(tree)
  new[head] = replace(tree[head], rest, value)
  return new


def init_tree(params: Sequence[Param], key: jax.Array, dtype=jnp.float32) -> dict:
  """Initial values of `params`; entry n draws from fold_in(key, n)."""
  values = {}
  for n, p in enumerate(params):
    if p.init == "ones":
      values[p.path] = jnp.ones(p.shape, dtype)
    elif p.init == "zeros":
      values[p.path] = jnp.zeros(p.shape, dtype)
    else:
      values[p.path] = jax.random.normal(jax.random.fold_in(key, n), p.shape, dtype) * p.std
  return build_tree(params, lambda p: values[p.path])


def init_layer(cfg: ModelConfig, key: jax.Array, moe: bool = False) -> dict:
  """One unstacked decoder layer's initial values (f32), e.g. for layer-level tests."""
  return init_tree(decoder_layer(cfg, moe), key)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
  """All parameters of `cfg` in cfg.param_dtype (f32 master weights by default)."""
  return init_tree(param_spec(cfg), key, jnp.dtype(cfg.param_dtype))


def abstract_params(cfg: ModelConfig) -> dict:
  """ShapeDtypeStructs of `init_params(cfg, key)`, without computing anything."""
  dt = jnp.dtype(cfg.param_dtype)
  return build_tree(param_spec(cfg), lambda p: jax.ShapeDtypeStruct(p.shape, dt))


def logical_axes(cfg: ModelConfig) -> dict:
  """The tree of logical-axis tuples (tuples are pytree nodes: map with is_leaf=tuple)."""
  return build_tree(param_spec(cfg), lambda p: p.axes)


def partition_specs(cfg: ModelConfig, mesh: Mesh) -> dict:
  """PartitionSpecs of the parameters on `mesh` by gemini.sharding's rules."""
  return build_tree(param_spec(cfg),
                    lambda p: sharding.logical_to_spec(p.axes, p.shape, mesh))


def shardings_of(params: Sequence[Param], mesh: Mesh) -> dict:
  """NamedShardings of any list of Params (e.g. one layer's, `decoder_layer`)."""
  return build_tree(params, lambda p: NamedSharding(
      mesh, sharding.logical_to_spec(p.axes, p.shape, mesh)))


def shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
  """NamedShardings of the parameters (the optimizer moments mirror them)."""
  return shardings_of(param_spec(cfg), mesh)


def decay_mask(cfg: ModelConfig) -> dict:
  """Bools: True where AdamW's weight decay applies."""
  return build_tree(param_spec(cfg), lambda p: p.decay)


def check_tree(params, cfg: ModelConfig, what: str = "params"):
  """Raises ValueError naming the first path whose presence or shape disagrees with cfg."""
  want = {p.path: p.shape for p in param_spec(cfg)}
  have = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    have[tuple(getattr(k, "key", getattr(k, "idx", None)) for k in kp)] = tuple(leaf.shape)
  for path, shape in want.items():
    name = "/".join(map(str, path))
    if path not in have:
      raise ValueError(f"{what} have no '{name}' (config {cfg.name!r})")
    if have[path] != shape:
      layers = ""
      if path[0] == "blocks" and have[path][1:] == shape[1:]:
        layers = (f" ({have[path][0]} stacked layers; config {cfg.name!r} has "
                  f"n_layers={cfg.n_layers})")
      raise ValueError(f"{what} '{name}' has shape {have[path]} but config {cfg.name!r} "
                       f"needs {shape}{layers}")
  extra = sorted("/".join(map(str, p)) for p in have if p not in want)
  if extra:
    raise ValueError(f"{what} have entries config {cfg.name!r} does not define: {extra[:5]}")


# --- decoder layers one by one (import, export, tests) ---------------------------------------


def layer_params(cfg: ModelConfig) -> Iterator[Tuple[int, int, int]]:
  """(layer index i, repetition r, block position j) for every decoder layer, in order."""
  p = len(block_pattern(cfg))
  for i in range(cfg.n_layers):
    yield i, i // p, i % p


def unstack_layers(params: dict, cfg: ModelConfig) -> List[dict]:
  """The decoder layers as a list of per-layer trees (index i = decoder layer i)."""
  return [jax.tree.map(lambda a, r=r: a[r], params["blocks"][j])
          for _, r, j in layer_params(cfg)]


def stack_layers(layers: Sequence[dict], cfg: ModelConfig) -> List[dict]:
  """Inverse of `unstack_layers`: per-layer trees -> params['blocks']."""
  if len(layers) != cfg.n_layers:
    raise ValueError(f"stack_layers: {len(layers)} layers for config {cfg.name!r} with "
                     f"n_layers={cfg.n_layers}")
  p = len(block_pattern(cfg))
  return [jax.tree.map(lambda *xs: jnp.stack(xs), *layers[j::p]) for j in range(p)]


def _decoder_order(cfg: ModelConfig) -> Iterator[Tuple[int, Param, Path]]:
  """(decoder layer index or -1, Param, index path) of every decoder tensor in file order
  (embed, layer 0 ... L-1, final_norm, unembed); the index path selects one layer's slice of
  a stacked array (() for unstacked ones). Encoders are not part of the decoder."""
  spec = [p for p in param_spec(cfg) if not p.path[0] in ("vision", "audio")]
  yield from ((-1, p, ()) for p in spec if p.path == ("embed", "tokens"))
  for i, r, j in layer_params(cfg):
    for p in spec:
      if p.stacked and p.path[:2] == ("blocks", j):
        yield i, p, (r,)
  yield from ((-1, p, ()) for p in spec if not p.stacked and p.path != ("embed", "tokens"))


def decoder_exports(cfg: ModelConfig) -> Iterator[Tuple[str, Param, Path]]:
  """(.gnb name, Param, index path) of every exported tensor in file order (FORMAT.md)."""
  for i, p, index in _decoder_order(cfg):
    if p.export:
      yield p.export.format(i=i), p, index


def llama_tensors(cfg: ModelConfig) -> Iterator[Tuple[str, str, Param, Path]]:
  """(GGUF tensor name, .gnb name, Param, index path) of the decoder in llama's layout.
  Raises ValueError naming the first parameter the llama architecture has no tensor for."""
  for i, p, index in _decoder_order(cfg):
    if p.gguf is None:
      raise ValueError(f"config {cfg.name!r}: parameter {p.name} has no llama GGUF tensor "
                       "(the llama architecture has dense layers and no q/k norms)")
    yield p.gguf.format(i=i), p.export.format(i=i), p, index


def gguf_shape(p: Param) -> Tuple[int, ...]:
  """The shape of p's llama GGUF tensor: one layer's int4 view transposed, [N, K] (output
  rows, as llama.cpp stores matrices); 1-D leaves as they are."""
  if p.k_axes is None:
    return p.layer_shape
  k = math.prod(p.layer_shape[a] for a in p.k_axes)
  return (math.prod(p.layer_shape) // k, k)


def from_gguf_matrix(p: Param, m) -> "np.ndarray":
  """A llama GGUF tensor (`gguf_shape(p)`, wq/wk rows in llama.cpp's interleaved RoPE order)
  as one layer's leaf of p (NumPy)."""
  m = np.asarray(m)
  if p.k_axes is None:
    return m.reshape(p.layer_shape)
  if p.rope:
    m = rope_rows(m, p.layer_shape[1], to_llama=False)
  shape = p.layer_shape
  order = p.k_axes + tuple(a for a in range(len(shape)) if a not in p.k_axes)
  w = m.T.reshape(tuple(shape[a] for a in order))
  return w.transpose(tuple(order.index(a) for a in range(len(shape))))


def rope_rows(m, heads: int, to_llama: bool):
  """Rows [heads * Dh, ...]: rotate-half pairs (d, d + Dh/2) <-> llama.cpp's adjacent pairs
  (2d, 2d + 1) within each head (trailing axes carried along: packed int4 rows, scales)."""
  dh = m.shape[0] // heads
  split = (heads, 2, dh // 2) if to_llama else (heads, dh // 2, 2)
  return m.reshape(split + m.shape[1:]).swapaxes(1, 2).reshape(m.shape)


def awq_sites(cfg: ModelConfig, moe: bool = False) -> Dict[str, Dict[str, list]]:
  """{site: {'matrices': [layer-relative paths], 'absorbers': [paths]}} of one decoder layer."""
  out: Dict[str, Dict[str, list]] = {}
  for p in decoder_layer(cfg, moe):
    if p.site:
      out.setdefault(p.site, {"matrices": [], "absorbers": []})["matrices"].append(p.path)
  for p in decoder_layer(cfg, moe):
    if p.absorbs:
      out[p.absorbs]["absorbers"].append(p.path)
  return out


def matrix_unview(p: Param, m: jax.Array) -> jax.Array:
  """Inverse of `matrix_view`: a [K, N] matrix back to one layer's leaf shape."""
  shape = p.layer_shape
  n_axes = tuple(a for a in range(len(shape)) if a not in p.k_axes)
  order = p.k_axes + n_axes
  w = m.reshape(tuple(shape[a] for a in order))
  return jnp.transpose(w, tuple(order.index(a) for a in range(len(shape))))


def matrix_view(p: Param, w: jax.Array) -> jax.Array:
  """The [K, N] matrix of one layer's leaf `w` (shape p.layer_shape) for x[K] @ W."""
  k_axes = p.k_axes
  n_axes = tuple(a for a in range(w.ndim) if a not in k_axes)
  k = math.prod(w.shape[a] for a in k_axes)
  return jnp.transpose(w, k_axes + n_axes).reshape(k, -1)
