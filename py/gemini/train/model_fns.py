"""The Gemini decoder (gemini.model.transformer) wired into the trainer's `ModelFns`."""

from __future__ import annotations

from typing import Optional

import jax
from jax.sharding import Mesh

from gemini import family, sharding
from gemini.config import ModelConfig
from gemini.train.trainer import ModelFns


def gemini_model(cfg: ModelConfig, seq_len: int, attn_impl: str = "xla",
                 moe_impl: str = "xla", remat: bool = False) -> ModelFns:
  """ModelFns for `cfg`; MFU counts family.train_flops_per_token(cfg, seq_len).

  remat=True recomputes each decoder layer in the backward pass (transformer.loss_fn)."""
  from gemini.model import transformer  # pylint: disable=import-outside-toplevel

  def make_loss(mesh: Optional[Mesh]):
    def loss_fn(params, batch, rng):
      del rng  # The decoder is deterministic (no dropout); the key is kept for future use.
      return transformer.loss_fn(params, batch, cfg, attn_impl=attn_impl, moe_impl=moe_impl,
                                 mesh=mesh, remat=remat)
    return loss_fn

  return ModelFns(
      init=lambda key: transformer.init_params(cfg, key),
      make_loss=make_loss,
      param_shardings=sharding.param_shardings,
      batch_sharding=sharding.batch_sharding,
      flops_per_token=family.train_flops_per_token(cfg, seq_len), vocab_size=cfg.vocab_size)
