"""Test helpers: random params of a config whose norm scales are not all ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemini.config import ModelConfig
from gemini.model import decode, spec, transformer
from gemini.quant import int4


def random_params(cfg: ModelConfig, key: jax.Array, norm_jitter: float = 0.1) -> dict:
  """`spec.init_params(cfg, key)` with every norm scale jittered around 1 (so a test sees
  a scale applied the wrong way round), f32."""
  params = spec.init_params(cfg.replace(param_dtype="float32"), key)
  for n, p in enumerate(spec.param_spec(cfg)):
    if p.init == "ones":
      noise = jax.random.normal(jax.random.fold_in(key, 10_000 + n), p.shape)
      params = spec.replace(params, p.path, 1 + norm_jitter * noise)
  return params


def dequantized(qparams: dict, cfg: ModelConfig) -> dict:
  """The float tree whose weights equal the int4 tree's dequantised values."""
  out = qparams
  for p in spec.param_spec(cfg):
    w = spec.get(qparams, p.path)
    if isinstance(w, int4.Int4Weight):
      one = lambda q, p=p: spec.matrix_unview(p, int4.dequantize(q))
      out = spec.replace(out, p.path, jax.vmap(one)(w) if p.stacked else one(w))
  return out


def greedy(params: dict, prompt, cfg: ModelConfig, max_new_tokens: int, eos_id=None) -> list:
  """Greedy continuation of one prompt (list of ids) with f32 activations, as the C++
  runtime computes: the new ids, up to and including eos_id when it is produced."""
  f32 = cfg.replace(dtype="float32")
  out = decode.generate(params, jnp.asarray([prompt], jnp.int32), f32, max_new_tokens,
                        eos_id=eos_id)
  ids = [int(t) for t in out[0]]
  return ids[:ids.index(eos_id) + 1] if eos_id is not None and eos_id in ids else ids


def logits(params: dict, ids, cfg: ModelConfig):
  """f32 logits [S, V] of one sequence with f32 activations (the runtime's reference)."""
  f32 = cfg.replace(dtype="float32")
  return transformer.forward(params, {"tokens": jnp.asarray([ids], jnp.int32)}, f32)[0][0]
