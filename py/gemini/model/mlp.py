"""Gated MLP: down(act(x @ w_gate) * (x @ w_up)), act = gelu (tanh approx.) or silu."""

import jax
import jax.numpy as jnp

from gemini import sharding
from gemini.config import ModelConfig


def activation(name: str):
  """The gate nonlinearity named by cfg.activation."""
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "silu":
    return jax.nn.silu
  raise ValueError(f"activation={name!r}: expected 'gelu' or 'silu'")


def init_mlp(key: jax.Array, d_model: int, d_ff: int, dtype=jnp.float32) -> dict:
  """{'w_gate' [D,F], 'w_up' [D,F], 'w_down' [F,D]}, fan-in scaled normal."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "w_gate": jax.random.normal(k1, (d_model, d_ff), dtype) * d_model ** -0.5,
      "w_up": jax.random.normal(k2, (d_model, d_ff), dtype) * d_model ** -0.5,
      "w_down": jax.random.normal(k3, (d_ff, d_model), dtype) * d_ff ** -0.5,
  }


def gated_mlp(params: dict, x: jax.Array, cfg: ModelConfig, mesh=None) -> jax.Array:
  """x [B,S,D] (compute dtype) -> [B,S,D] same dtype; weights cast to x.dtype.
  With a mesh, the hidden [B,S,F] is constrained to ('batch', 'seq', 'act_mlp')."""
  dt = x.dtype
  gate = x @ params["w_gate"].astype(dt)
  up = x @ params["w_up"].astype(dt)
  h = sharding.constrain(activation(cfg.activation)(gate) * up, ("batch", "seq", "act_mlp"), mesh)
  return h @ params["w_down"].astype(dt)
