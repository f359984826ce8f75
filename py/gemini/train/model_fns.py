"""The Gemini decoder (gemini.model.transformer) wired into the trainer's `ModelFns`."""

from __future__ import annotations

from typing import Optional, Union

from jax.sharding import Mesh

from gemini import family, sharding
from gemini.config import ModelConfig
from gemini.model import spec, transformer
from gemini.train.trainer import ModelFns


def gemini_model(cfg: ModelConfig, seq_len: int, attn_impl: str = "xla",
                 moe_impl: str = "xla", remat: str = "none",
                 unroll: Union[bool, int] = False) -> ModelFns:
  """ModelFns for `cfg`; MFU counts family.train_flops_per_token(cfg, seq_len).

  remat: a transformer.REMAT_POLICIES name, applied to each scanned block of layers;
  unroll: lax.scan's unroll of the layer scan (transformer.forward)."""

  def make_loss(mesh: Optional[Mesh]):
    def loss_fn(params, batch, rng):
      del rng  # The decoder is deterministic (no dropout); the key is kept for future use.
      return transformer.loss_fn(params, batch, cfg, attn_impl=attn_impl, moe_impl=moe_impl,
                                 mesh=mesh, remat=remat, unroll=unroll)
    return loss_fn

  return ModelFns(
      init=lambda key: spec.init_params(cfg, key),
      make_loss=make_loss,
      param_shardings=lambda _, mesh: spec.shardings(cfg, mesh),
      batch_sharding=sharding.batch_sharding,
      flops_per_token=family.train_flops_per_token(cfg, seq_len),
      decay_mask=spec.decay_mask(cfg), vocab_size=cfg.vocab_size)
