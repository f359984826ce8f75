"""Gated MLP: down(act(x @ w_gate) * (x @ w_up)), act = gelu (tanh approx.) or silu."""

import jax
import jax.numpy as jnp

from gemini import sharding
from gemini.config import ModelConfig
from gemini.model import dense


def activation(name: str):
  """The gate nonlinearity named by cfg.activation."""
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "silu":
    return jax.nn.silu
  raise ValueError(f"activation={name!r}: expected 'gelu' or 'silu'")


def gated_mlp(params: dict, x: jax.Array, cfg: ModelConfig, mesh=None, *,
              int4_impl: str = "xla") -> jax.Array:
  """x [B,S,D] (compute dtype) -> [B,S,D] same dtype; float weights cast to x.dtype, int4
  weights through gemini.model.dense. With a mesh, the hidden [B,S,F] is constrained to
  ('batch', 'seq', 'act_mlp')."""
  gate = dense.dense(x, params["w_gate"], impl=int4_impl)
  up = dense.dense(x, params["w_up"], impl=int4_impl)
  h = sharding.constrain(activation(cfg.activation)(gate) * up, ("batch", "seq", "act_mlp"), mesh)
  return dense.dense(h, params["w_down"], impl=int4_impl)
