"""The decoder: forward (logits) and loss_fn, as a `lax.scan` over stacked layer blocks.

Parameters come from `gemini.model.spec` (init_params re-exported here): the layers of one
repeating block (dense/MoE pattern) are stacked on a leading [R] axis and the decoder scans
over R, running the block's p layers in each step, so program size and compile time do not
grow with depth. Weight leaves may be float arrays or `Int4Weight`s (one forward for both;
`gemini.model.dense`). Mixed precision: params stay f32; activations run in cfg.dtype;
norms, softmax, router and logits are f32.

Rematerialisation (`remat=`) is a named policy applied to each scanned block:
  none                 keep every activation for the backward pass
  full                 keep only each block's input; recompute the rest
  save_dots            keep the outputs of weight matmuls (no batch dims), recompute the rest
  save_attention_out   keep only each layer's attention output (named 'attention_out')
With `none`, the scanned block's bf16 residuals are stacked as uint16 bit patterns
(`bf16_residuals_as_bits`): XLA:CPU has no bf16 dynamic-update-slice and otherwise rewrote
each whole bf16 stack through f32 on every layer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import attention, embed, mlp, moe, multimodal, norm, spec

init_params = spec.init_params

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}

_TEXT_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class _Bf16Bits:
  """A bf16 residual held as its uint16 bit pattern (same bytes, an integer dtype)."""
  bits: jax.Array


jax.tree_util.register_dataclass(_Bf16Bits, data_fields=["bits"], meta_fields=[])


def _pack(a):
  if isinstance(a, jax.Array) and a.dtype == jnp.bfloat16:
    return _Bf16Bits(jax.lax.bitcast_convert_type(a, jnp.uint16))
  return a


def _unpack(a):
  if isinstance(a, _Bf16Bits):
    return jax.lax.bitcast_convert_type(a.bits, jnp.bfloat16)
  return a


def bf16_residuals_as_bits(f: Callable) -> Callable:
  """f with the same values and gradients, its bf16 residuals kept as uint16 bit patterns.

  Under `lax.scan` the residuals of the body are stacked [R, ...] with a dynamic-update-slice
  per iteration. XLA:CPU has no bf16 dynamic-update-slice: it converted the whole bf16 stack
  to f32 and back on every iteration (and each stack to f32 again for the backward pass);
  an integer stack of the same bytes is updated in place."""

  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    out, vjp_fn = jax.vjp(f, *args)
    return out, jax.tree.map(_pack, vjp_fn)

  def bwd(res, ct):
    vjp_fn = jax.tree.map(_unpack, res, is_leaf=lambda n: isinstance(n, _Bf16Bits))
    return vjp_fn(ct)

  g.defvjp(fwd, bwd)
  return g


def has_media(batch: dict) -> bool:
  """True if the batch carries media (any of multimodal.MEDIA_KEYS: arrays or layout)."""
  return any(k in multimodal.MEDIA_KEYS for k in batch if k not in _TEXT_KEYS)


def embed_inputs(params: dict, batch: dict, cfg: ModelConfig):
  """batch -> (x [B,S,D] cfg.dtype, segment_ids int32 [B,S], positions int32 [B,S],
  bidir_ids int32 [B,S] or None). Defaults: one segment per row, positions = arange."""
  if "tokens" not in batch:
    raise ValueError(f"model batch has no 'tokens' (keys: {sorted(batch)})")
  tokens = batch["tokens"]
  if tokens.ndim != 2:
    raise ValueError(f"model batch 'tokens' must be [B,S], got shape {tokens.shape}")
  b, s = tokens.shape
  for key in ("segment_ids", "positions", "targets", "loss_mask"):
    if key in batch and tuple(batch[key].shape) != (b, s):
      raise ValueError(f"model batch {key!r} has shape {tuple(batch[key].shape)}; tokens are {(b, s)}")
  segment_ids = batch.get("segment_ids")
  if segment_ids is None:
    segment_ids = jnp.ones((b, s), jnp.int32)
  positions = batch.get("positions")
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  if has_media(batch):
    x, bidir_ids = multimodal.embed_sequence(params, batch, cfg)
    x = x.astype(cfg.dtype)
  else:
    x, bidir_ids = embed.embed_tokens(params, tokens, cfg), None
  return x, segment_ids, positions, bidir_ids


def decoder_layer(layer: dict, x: jax.Array, attn_fn: Callable, cfg: ModelConfig, is_moe: bool,
                  *, moe_impl: str = "xla", int4_impl: str = "xla", mesh=None):
  """One pre-norm block. x [B,S,D]; attn_fn(attn_params, h [B,S,D]) -> ([B,S,D], aux).
  Returns (x [B,S,D], MoE metrics dict or None for dense layers, aux)."""
  h = norm.rms_norm(layer["attn_norm"], x, cfg.norm_eps)
  a, aux = attn_fn(layer["attn"], h)
  x = sharding.constrain(x + a, ("batch", "seq", "act_embed"), mesh)
  h = norm.rms_norm(layer["mlp_norm"], x, cfg.norm_eps)
  metrics = None
  if is_moe:
    y, metrics = moe.moe_mlp(layer["moe"], h, cfg, impl=moe_impl, mesh=mesh)
  else:
    y = mlp.gated_mlp(layer["mlp"], h, cfg, mesh, int4_impl=int4_impl)
  x = x + y.astype(x.dtype)
  return sharding.constrain(x, ("batch", "seq", "act_embed"), mesh), metrics, aux


def scan_decoder(params: dict, x: jax.Array, cfg: ModelConfig, layer_fn: Callable, state=None,
                 *, remat: str = "none", unroll: Union[bool, int] = False):
  """Runs every decoder layer over x with a scan over the stacked blocks.

  layer_fn(layer_params, x, is_moe, layer_index int32 [], state) -> (x, MoE metrics or None,
  state); `state` is carried through all layers (decoding carries the KV cache in it, so
  each layer updates its slice in place). Returns (x, [the MoE metrics dict of all MoE
  layers, leaves [R, pm, ...] in layer order] or [], state)."""
  pattern = spec.block_pattern(cfg)
  p, r = len(pattern), spec.repeats(cfg)

  def body(carry, xs):
    x, state = carry
    blocks, rep = xs
    metrics = []
    for j, is_moe in enumerate(pattern):
      x, m, state = layer_fn(blocks[j], x, is_moe, rep * p + j, state)
      if m is not None:
        metrics.append(m)
    return (x, state), metrics

  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: expected one of {tuple(REMAT_POLICIES)}")
  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  else:
    body = bf16_residuals_as_bits(body)
  (x, state), metrics = jax.lax.scan(body, (x, state),
                                     (params["blocks"], jnp.arange(r, dtype=jnp.int32)),
                                     unroll=unroll)
  # metrics: one dict per MoE block position, leaves [R, ...] -> one dict, leaves [R, pm, ...].
  per_moe = [jax.tree.map(lambda *a: jnp.stack(a, axis=1), *metrics)] if metrics else []
  return x, per_moe, state


def collect_moe_metrics(per_moe_layer, cfg: ModelConfig) -> Dict[str, jax.Array]:
  """expert_load [Lm,E], drop_fraction [Lm], tokens_dropped int32 [Lm]; aux_loss/z_loss: mean
  over the MoE layers (scalars, 0 for dense models)."""
  if not per_moe_layer:
    e = max(cfg.moe.num_experts, 1)
    return {"aux_loss": jnp.zeros((), jnp.float32), "z_loss": jnp.zeros((), jnp.float32),
            "expert_load": jnp.zeros((0, e), jnp.float32),
            "drop_fraction": jnp.zeros((0,), jnp.float32),
            "tokens_dropped": jnp.zeros((0,), jnp.int32)}
  m = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), per_moe_layer[0])  # [R*pm, ...]
  return {"aux_loss": jnp.mean(m["aux_loss"]), "z_loss": jnp.mean(m["z_loss"]),
          "expert_load": m["expert_load"], "drop_fraction": m["drop_fraction"],
          "tokens_dropped": m["tokens_dropped"].astype(jnp.int32)}


def forward(params: dict, batch: dict, cfg: ModelConfig, *, attn_impl: str = "xla",
            moe_impl: str = "xla", int4_impl: str = "xla", mesh=None, remat: str = "none",
            unroll: Union[bool, int] = False) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """batch (tokens int32 [B,S], optional segment_ids/positions int32 [B,S], media keys)
  -> (logits f32 [B,S,V], metrics of collect_moe_metrics; Lm = cfg.num_moe_layers).
  remat: a REMAT_POLICIES name; unroll: lax.scan's unroll of the layer scan (True: every
  block, the pre-scan program kept to measure compile time against; an int: that many blocks
  per loop iteration, which the AOT cost count uses)."""
  x, segment_ids, positions, bidir_ids = embed_inputs(params, batch, cfg)
  x = sharding.constrain(x, ("batch", "seq", "act_embed"), mesh)

  def attn_fn(p, h):
    return attention.attention_block(p, h, segment_ids, positions, bidir_ids, cfg,
                                     impl=attn_impl, mesh=mesh, int4_impl=int4_impl), None

  def layer_fn(lp, x, is_moe, _, state):
    x, m, _ = decoder_layer(lp, x, attn_fn, cfg, is_moe, moe_impl=moe_impl,
                            int4_impl=int4_impl, mesh=mesh)
    return x, m, state

  x, per_moe, _ = scan_decoder(params, x, cfg, layer_fn, remat=remat, unroll=unroll)
  x = norm.rms_norm(params["final_norm"], x, cfg.norm_eps)
  logits = embed.logits(params, x, cfg, int4_impl=int4_impl)
  logits = sharding.constrain(logits, ("batch", "seq", "act_vocab"), mesh)
  return logits, collect_moe_metrics(per_moe, cfg)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array):
  """logits f32 [B,S,V], targets int [B,S], weights f32 [B,S] -> (mean CE, sum weights, acc)."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  n = jnp.sum(weights)
  denom = jnp.maximum(n, 1.0)
  ce = jnp.sum((logz - tgt) * weights) / denom
  acc = jnp.sum((first_argmax(logits) == targets) * weights) / denom
  return ce, n, acc


def first_argmax(logits: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (the first maximum's index) as a max and a min reduction:
  XLA:CPU runs argmax's variadic reduce ~6x slower (11 vs 1.8 ms CPU on [4,64,8192] f32)."""
  v = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(logits == top, iota, v), axis=-1)


def loss_fn(params: dict, batch: dict, cfg: ModelConfig, *, attn_impl: str = "xla",
            moe_impl: str = "xla", int4_impl: str = "xla", mesh=None, remat: str = "none",
            unroll: Union[bool, int] = False) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Mean next-token CE over tokens with segment_ids != 0 (times optional loss_mask), plus
  cfg.moe.aux_loss_weight * aux_loss + cfg.moe.z_loss_weight * z_loss. -> (loss f32, metrics)."""
  logits, metrics = forward(params, batch, cfg, attn_impl=attn_impl, moe_impl=moe_impl,
                            int4_impl=int4_impl, mesh=mesh, remat=remat, unroll=unroll)
  tokens = batch["tokens"]
  weights = (batch.get("segment_ids", jnp.ones_like(tokens)) != 0).astype(jnp.float32)
  if "loss_mask" in batch:
    weights = weights * batch["loss_mask"].astype(jnp.float32)
  ce, n, acc = cross_entropy(logits, batch["targets"], weights)
  loss = ce + cfg.moe.aux_loss_weight * metrics["aux_loss"] + cfg.moe.z_loss_weight * metrics["z_loss"]
  metrics = dict(metrics, ce_loss=ce, num_tokens=n, accuracy=acc, loss=loss)
  return loss, metrics
