"""The decoder: init_params, forward (logits) and loss_fn.

Parameter tree: exactly the one in gemini/family.py's docstring; `params['layers']` is a list of
per-layer dicts (dense layers carry 'mlp', MoE layers carry 'moe'). Mixed precision: params
stay f32; activations run in cfg.dtype; norms, softmax, router and logits are f32.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import attention, embed, mlp, norm


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
  """All parameters (cfg.param_dtype, f32 by default) as the family.py tree."""
  dt = jnp.dtype(cfg.param_dtype)
  k_embed, k_unembed, k_layers, k_vision, k_audio = jax.random.split(key, 5)
  params = {"embed": embed.init_embed(k_embed, cfg, dt), "layers": []}
  for i, k in enumerate(jax.random.split(k_layers, cfg.n_layers)):
    k_attn, k_mlp = jax.random.split(k)
    layer = {"attn_norm": norm.init_norm(cfg.d_model, dt),
             "attn": attention.init_attention(k_attn, cfg, dt),
             "mlp_norm": norm.init_norm(cfg.d_model, dt)}
    if cfg.is_moe_layer(i):
      from gemini.model import moe
      layer["moe"] = moe.init_moe_params(cfg, k_mlp, dt)
    else:
      layer["mlp"] = mlp.init_mlp(k_mlp, cfg.d_model, cfg.d_ff, dt)
    params["layers"].append(layer)
  params["final_norm"] = norm.init_norm(cfg.d_model, dt)
  if not cfg.tie_embeddings:
    params["unembed"] = embed.init_unembed(k_unembed, cfg, dt)
  if cfg.vision.enabled:
    from gemini.model import vision
    params["vision"] = vision.init_vision(k_vision, cfg, dt)
  if cfg.audio.enabled:
    from gemini.model import audio
    params["audio"] = audio.init_audio(k_audio, cfg, dt)
  return params


_TEXT_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


def has_media(batch: dict) -> bool:
  """True if the batch carries media (any of multimodal.MEDIA_KEYS: arrays or layout).
  Text-only batches never import the encoders."""
  extra = [k for k in batch if k not in _TEXT_KEYS]
  if not extra:
    return False
  from gemini.model import multimodal
  return any(k in multimodal.MEDIA_KEYS for k in extra)


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
    from gemini.model import multimodal
    x, bidir_ids = multimodal.embed_sequence(params, batch, cfg)
    x = x.astype(cfg.dtype)
  else:
    x, bidir_ids = embed.embed_tokens(params, tokens, cfg), None
  return x, segment_ids, positions, bidir_ids


def decoder_layer(layer: dict, x: jax.Array, attn_fn: Callable, cfg: ModelConfig, index: int,
                  *, moe_impl: str = "xla", mesh=None) -> Tuple[jax.Array, Optional[dict]]:
  """One pre-norm block. x [B,S,D]; attn_fn(attn_params, h [B,S,D]) -> [B,S,D].
  Returns (x [B,S,D], MoE metrics dict or None for dense layers)."""
  h = norm.rms_norm(layer["attn_norm"], x, cfg.norm_eps)
  x = x + attn_fn(layer["attn"], h)
  x = sharding.constrain(x, ("batch", "seq", "act_embed"), mesh)
  h = norm.rms_norm(layer["mlp_norm"], x, cfg.norm_eps)
  metrics = None
  if cfg.is_moe_layer(index):
    from gemini.model import moe
    y, metrics = moe.moe_mlp(layer["moe"], h, cfg, impl=moe_impl, mesh=mesh)
  else:
    y = mlp.gated_mlp(layer["mlp"], h, cfg, mesh)
  x = x + y.astype(x.dtype)
  return sharding.constrain(x, ("batch", "seq", "act_embed"), mesh), metrics


def collect_moe_metrics(per_layer, cfg: ModelConfig) -> Dict[str, jax.Array]:
  """Stacks per-MoE-layer metrics: expert_load [Lm,E], drop_fraction [Lm], tokens_dropped
  int32 [Lm]; aux_loss/z_loss: mean over the MoE layers (scalars, 0 for dense models)."""
  per_layer = [m for m in per_layer if m is not None]
  if not per_layer:
    e = max(cfg.moe.num_experts, 1)
    return {"aux_loss": jnp.zeros((), jnp.float32), "z_loss": jnp.zeros((), jnp.float32),
            "expert_load": jnp.zeros((0, e), jnp.float32),
            "drop_fraction": jnp.zeros((0,), jnp.float32),
            "tokens_dropped": jnp.zeros((0,), jnp.int32)}
  stack = lambda k, dt=jnp.float32: jnp.stack([jnp.asarray(m.get(k, 0), dt) for m in per_layer])
  return {"aux_loss": jnp.mean(stack("aux_loss")), "z_loss": jnp.mean(stack("z_loss")),
          "expert_load": stack("expert_load"), "drop_fraction": stack("drop_fraction"),
          "tokens_dropped": stack("tokens_dropped", jnp.int32)}


def forward(params: dict, batch: dict, cfg: ModelConfig, *, attn_impl: str = "xla",
            moe_impl: str = "xla", mesh=None,
            remat: bool = False) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """batch (tokens int32 [B,S], optional segment_ids/positions int32 [B,S], media keys)
  remat=True recomputes each layer's activations in the backward pass (jax.checkpoint).
  -> (logits f32 [B,S,V], metrics of collect_moe_metrics; Lm = cfg.num_moe_layers)."""
  x, segment_ids, positions, bidir_ids = embed_inputs(params, batch, cfg)
  x = sharding.constrain(x, ("batch", "seq", "act_embed"), mesh)

  def attn_fn(p, h):
    return attention.attention_block(p, h, segment_ids, positions, bidir_ids, cfg,
                                     impl=attn_impl, mesh=mesh)

  per_layer = []
  for i, layer in enumerate(params["layers"]):
    run = lambda layer, x, i=i: decoder_layer(layer, x, attn_fn, cfg, i, moe_impl=moe_impl,
                                              mesh=mesh)
    x, m = (jax.checkpoint(run) if remat else run)(layer, x)
    per_layer.append(m)
  x = norm.rms_norm(params["final_norm"], x, cfg.norm_eps)
  logits = embed.logits(params, x, cfg)
  logits = sharding.constrain(logits, ("batch", "seq", "act_vocab"), mesh)
  return logits, collect_moe_metrics(per_layer, cfg)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array):
  """logits f32 [B,S,V], targets int [B,S], weights f32 [B,S] -> (mean CE, sum weights, acc)."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  n = jnp.sum(weights)
  denom = jnp.maximum(n, 1.0)
  ce = jnp.sum((logz - tgt) * weights) / denom
  acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / denom
  return ce, n, acc


def loss_fn(params: dict, batch: dict, cfg: ModelConfig, *, attn_impl: str = "xla",
            moe_impl: str = "xla", mesh=None,
            remat: bool = False) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Mean next-token CE over tokens with segment_ids != 0 (times optional loss_mask), plus
  cfg.moe.aux_loss_weight * aux_loss + cfg.moe.z_loss_weight * z_loss. -> (loss f32, metrics)."""
  logits, metrics = forward(params, batch, cfg, attn_impl=attn_impl, moe_impl=moe_impl, mesh=mesh,
                            remat=remat)
  tokens = batch["tokens"]
  weights = (batch.get("segment_ids", jnp.ones_like(tokens)) != 0).astype(jnp.float32)
  if "loss_mask" in batch:
    weights = weights * batch["loss_mask"].astype(jnp.float32)
  ce, n, acc = cross_entropy(logits, batch["targets"], weights)
  loss = ce + cfg.moe.aux_loss_weight * metrics["aux_loss"] + cfg.moe.z_loss_weight * metrics["z_loss"]
  metrics = dict(metrics, ce_loss=ce, num_tokens=n, accuracy=acc, loss=loss)
  return loss, metrics
