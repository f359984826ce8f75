"""A device mesh on the JAX engine (8 fake CPU devices): a tensor/expert/data-sharded MoE
engine's greedy tokens equal the single-device engine's, with requests joining mid-stream."""

import dataclasses

import jax
import numpy as np

from gemini import sharding
from gemini.config import MoEConfig
from gemini.model import transformer
from gemini.serve import engine as E
from gemini.serve import testing


def _run(eng, params, prompts, steps):
  state = eng.init_state()
  ctl = E.Controls.idle(eng.ecfg.n_slots, eng.vocab)
  out = [[] for _ in prompts]
  for step in range(steps):
    if step < len(prompts):                          # one request joins per step
      state = eng.insert(eng.prefill(params, prompts[step]), state, step)
    state, toks = eng.generate(params, state, ctl)
    for i in range(min(step + 1, len(prompts))):
      out[i].append(int(toks[i]))
  return out, state


def test_sharded_engine_greedy_equals_single_device():
  assert len(jax.devices()) == 8
  cfg = dataclasses.replace(
      testing.tiny_cfg(512, dtype="float32", n_heads=4, n_kv_heads=2),
      moe=MoEConfig(num_experts=4, top_k=2, d_ff=64, layers=(1,)))
  params = transformer.init_params(cfg, jax.random.key(7))
  ecfg = E.EngineConfig(n_slots=4, max_len=64, chunk=16, chunk_buckets=(8, 16), prefix_entries=0)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(5, 512, n).tolist() for n in (6, 19, 11, 3)]
  single, _ = _run(E.Engine(params, cfg, ecfg), params, prompts, 12)
  mesh = sharding.make_mesh({"data": 2, "tensor": 2, "expert": 2})
  eng = E.Engine(params, cfg, ecfg, mesh=mesh)
  sharded, state = _run(eng, eng.params, prompts, 12)
  assert sharded == single
  k = state["cache"]["k"]
  assert len(k.sharding.device_set) == 8 and not k.sharding.is_fully_replicated
  leaves = jax.tree.leaves(eng.params)
  assert any(not x.sharding.is_fully_replicated for x in leaves)
