"""int4 weights on the JAX engine: batched greedy through the engine (Int4Weight leaves, the
one `dense`) equals `decode.generate` one prompt at a time with the same quantised params."""

import jax
import jax.numpy as jnp
import numpy as np

from gemini.model import decode, transformer
from gemini.quant import params as qparams
from gemini.serve import engine as E
from gemini.serve import testing
from pallas.int4_matmul.weight import Int4Weight


def test_int4_engine_greedy_equals_generate_with_the_same_quantised_params():
  cfg = testing.tiny_cfg(512, dtype="float32")
  params = transformer.init_params(cfg, jax.random.key(4))
  q = qparams.quantize_params(params, cfg, group_size=32)
  leaves = jax.tree.leaves(q, is_leaf=lambda x: isinstance(x, Int4Weight))
  assert sum(isinstance(x, Int4Weight) for x in leaves) >= 6
  eng = E.Engine(q, cfg, E.EngineConfig(n_slots=3, max_len=96, chunk=16, chunk_buckets=(8, 16),
                                        prefix_entries=0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(5, 512, n).tolist() for n in (5, 21, 12)]
  def one_at_a_time(tree):   # each prompt alone, left-padded to 21 (one compiled shape)
    out = []
    for p in prompts:
      toks = jnp.asarray([[0] * (21 - len(p)) + p])
      seg = jnp.asarray([[0] * (21 - len(p)) + [1] * len(p)])
      out.append(np.asarray(decode.generate(tree, toks, cfg, 10, prompt_segment_ids=seg))[0]
                 .tolist())
    return out
  refs, float_refs = one_at_a_time(q), one_at_a_time(params)
  state = eng.init_state()
  for slot, p in enumerate(prompts):
    state = eng.insert(eng.prefill(q, p), state, slot)
  ctl = E.Controls.idle(3, cfg.vocab_size)
  out = [[] for _ in prompts]
  for _ in range(10):
    state, toks = eng.generate(q, state, ctl)
    for i in range(3):
      out[i].append(int(toks[i]))
  assert out == refs
  # The int4 tree is really what ran: its greedy tokens are not all the float model's.
  assert refs != float_refs
