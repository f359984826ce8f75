"""int4 weights on the JAX engine: batched greedy through the engine (Int4Weight leaves, the
one `dense`) equals `decode.generate` one prompt at a time with the same quantised params; a
.gnb export reads back to that same tree bit for bit and serves the same tokens."""

import jax
import jax.numpy as jnp
import numpy as np

from gemini.export import gnb
from gemini.model import decode, transformer
from gemini.quant import params as qparams
from gemini.serve import engine as E
from gemini.serve import gnb_params, testing
from pallas.int4_matmul.weight import Int4Weight

CFG = testing.tiny_cfg(512, dtype="float32")
ECFG = E.EngineConfig(n_slots=3, max_len=96, chunk=16, chunk_buckets=(8, 16), prefix_entries=0)
WIDTH = 21                    # reference prompts are left-padded to this (one compiled shape)


def _prompts():
  rng = np.random.default_rng(0)
  return [rng.integers(5, 512, n).tolist() for n in (5, 21, 12)]


def _one_at_a_time(tree, cfg, prompts, n=10):
  out = []
  for p in prompts:
    toks = jnp.asarray([[0] * (WIDTH - len(p)) + p])
    seg = jnp.asarray([[0] * (WIDTH - len(p)) + [1] * len(p)])
    out.append(np.asarray(decode.generate(tree, toks, cfg, n, prompt_segment_ids=seg))[0]
               .tolist())
  return out


def _engine_batched(tree, cfg, prompts, n=10):
  eng = E.Engine(tree, cfg, ECFG)
  state = eng.init_state()
  for slot, p in enumerate(prompts):
    state = eng.insert(eng.prefill(tree, p), state, slot)
  ctl = E.Controls.idle(ECFG.n_slots, cfg.vocab_size)
  out = [[] for _ in prompts]
  for _ in range(n):
    state, toks = eng.generate(tree, state, ctl)
    for i in range(len(prompts)):
      out[i].append(int(toks[i]))
  return out


def test_int4_engine_greedy_equals_generate_with_the_same_quantised_params():
  params = transformer.init_params(CFG, jax.random.key(4))
  q = qparams.quantize_params(params, CFG, group_size=32)
  leaves = jax.tree.leaves(q, is_leaf=lambda x: isinstance(x, Int4Weight))
  assert sum(isinstance(x, Int4Weight) for x in leaves) >= 6
  refs = _one_at_a_time(q, CFG, _prompts())
  assert _engine_batched(q, CFG, _prompts()) == refs
  # The int4 tree is really what ran: its greedy tokens are not all the float model's.
  assert refs != _one_at_a_time(params, CFG, _prompts())


def test_a_gnb_file_reads_back_to_the_quantised_tree_and_serves_the_same_tokens():
  params = transformer.init_params(CFG, jax.random.key(5))
  q = qparams.quantize_params(params, CFG, group_size=32)
  data = gnb.encode(gnb.config_dict(CFG, 32), gnb.TOK_NONE, b"", gnb.model_tensors(q, CFG))
  read, rcfg = gnb_params.params_from_gnb(gnb.decode(data))
  assert rcfg == CFG
  assert jax.tree.structure(read) == jax.tree.structure(q)
  for a, b in zip(jax.tree.leaves(read), jax.tree.leaves(q)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _engine_batched(read, rcfg, _prompts()) == _one_at_a_time(q, CFG, _prompts())
