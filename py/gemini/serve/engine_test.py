"""Engine and scheduler against the model's own decode.generate (the independent reference)."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.model import decode, transformer
from gemini.serve import engine as E
from gemini.serve import request as R
from gemini.serve import scheduler as S
from gemini.serve import testing
from gemini.serve import model_backend


_MAX_LEN = 160


@pytest.fixture(scope="module")
def model():
  cfg = testing.tiny_cfg(700)
  return transformer.init_params(cfg, jax.random.key(1)), cfg


def _engine(model, **kw):
  params, cfg = model
  ecfg = E.EngineConfig(n_slots=4, max_len=_MAX_LEN, chunk=16, chunk_buckets=(4, 8, 16), **kw)
  return E.Engine(params, cfg, ecfg)


def _reference(model, prompt, n):
  # One cache length for every reference (the engine's): the decode step compiles once, not
  # once per prompt length + n.
  params, cfg = model
  return np.asarray(decode.generate(params, jnp.asarray([prompt]), cfg, n,
                                    max_len=_MAX_LEN))[0].tolist()


def test_batched_greedy_equals_generate_and_no_recompiles(model):
  params, cfg = model
  eng = _engine(model, prefix_entries=0)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(5, 700, n).tolist() for n in (3, 17, 40, 9, 33, 16)]
  refs = [_reference(model, p, 12) for p in prompts]
  state = eng.init_state()
  ctl = E.Controls.idle(4, cfg.vocab_size)
  # Requests join at different steps: slot s gets prompt s at step 3*s, later prompts reuse
  # freed slots; every row must still equal its one-at-a-time reference.
  out = {i: [] for i in range(len(prompts))}
  owner, pending, step = {}, list(range(len(prompts))), 0
  while pending or owner:
    for slot in range(4):
      if slot not in owner and pending and step >= 3 * pending[0] // 2:
        i = pending.pop(0)
        state = eng.insert(eng.prefill(params, prompts[i]), state, slot)
        owner[slot] = i
    state, toks = eng.generate(params, state, ctl)
    for slot, i in list(owner.items()):
      out[i].append(int(toks[slot]))
      if len(out[i]) == 12:
        del owner[slot]
    step += 1
  assert [out[i] for i in range(len(prompts))] == refs
  # One decode step and one insert compiled; prefill once per chunk bucket at most.
  assert E._generate._cache_size() == 1
  assert E._insert._cache_size() == 1
  assert model_backend.prefill_row._cache_size() <= 3


def test_prefix_cache_saves_prefill_and_keeps_outputs(model):
  params, _ = model
  eng = _engine(model)
  base = list(range(10, 48))                        # 38 tokens: two full chunks + 6 (padded to 8)
  first = eng.prefill(params, base)
  assert first.cached == 0
  follow = base + [7, 8, 9]
  second = eng.prefill(params, follow)
  assert second.cached == 38 and eng.prefix_cache.stats.tokens_saved == 38
  fresh = _engine(model, prefix_entries=0).prefill(params, follow)
  np.testing.assert_allclose(np.asarray(second.logits), np.asarray(fresh.logits), atol=1e-4)
  # Shares 35 tokens with `base`, whose snapshot is position-aligned for its two full chunks:
  # 32 reused (the row truncated there), the rest prefilled.
  odd = base[:35] + [1, 2]
  partial = eng.prefill(params, odd)
  assert partial.cached == 32
  fresh = _engine(model, prefix_entries=0).prefill(params, odd)
  np.testing.assert_allclose(np.asarray(partial.logits), np.asarray(fresh.logits), atol=1e-4)
  # Decoding from the truncated row equals decoding from a fresh prefill.
  state = eng.insert(partial, eng.init_state(), 1)
  state, toks = eng.generate(params, state, E.Controls.idle(4, model[1].vocab_size))
  assert int(toks[1]) == _reference(model, odd, 1)[0]


def _run(sched, tok_ids, **params):
  done = threading.Event()
  events = []

  def emit(ev):
    events.append(ev)
    if ev.kind == "done":
      done.set()

  req = R.Request(tok_ids, R.GenParams(**params), emit)
  sched.submit(req)
  return req, events, done


class _IdTokenizer:
  """Token ids as text: 'a<id>' per token, so stop sequences can be checked exactly."""
  vocab_size = 700
  eos_ids = frozenset({3})
  bos_id = None
  think_open = think_close = None

  def decode(self, ids):
    return "".join(f"a{i}" for i in ids)


def test_scheduler_seeds_reproducible_whatever_is_batched(model):
  eng = _engine(model)
  sched = S.Scheduler(eng, _IdTokenizer())
  try:
    prompt = list(range(20, 45))
    _, alone, d = _run(sched, prompt, max_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    assert d.wait(120)
    others = [_run(sched, list(range(5, 5 + n)), max_tokens=14, temperature=0.8, seed=n)
              for n in (8, 30, 12)]
    _, batched, d2 = _run(sched, prompt, max_tokens=10, temperature=1.0, top_k=50, top_p=0.9,
                          seed=7)
    assert d2.wait(120) and all(o[2].wait(120) for o in others)
    text = lambda evs: "".join(e.text for e in evs if e.kind == "delta")
    assert text(alone) == text(batched) and text(alone)
    _, other_seed, d3 = _run(sched, prompt, max_tokens=10, temperature=1.0, top_k=50, top_p=0.9,
                             seed=8)
    assert d3.wait(120) and text(other_seed) != text(alone)
  finally:
    sched.stop()


def test_scheduler_stop_sequence_max_tokens_and_cancel(model):
  eng = _engine(model)
  sched = S.Scheduler(eng, _IdTokenizer())
  try:
    prompt = list(range(30, 50))
    ref = _reference(model, prompt, 8)
    _, evs, d = _run(sched, prompt, max_tokens=8)
    assert d.wait(120)
    full = "".join(f"a{i}" for i in ref)
    assert "".join(e.text for e in evs if e.kind == "delta") == full
    assert evs[-1].finish_reason == "length" and evs[-1].usage["completion_tokens"] == 8
    stop = f"a{ref[3]}"
    _, evs, d = _run(sched, prompt, max_tokens=8, stop=(stop,))
    assert d.wait(120)
    assert "".join(e.text for e in evs if e.kind == "delta") == full[:full.find(stop)]
    assert evs[-1].finish_reason == "stop"
    req, evs, d = _run(sched, prompt, max_tokens=100)
    req.cancel()
    assert d.wait(120) and evs[-1].finish_reason == "cancelled"
    with pytest.raises(ValueError, match="cache positions"):
      _run(sched, prompt * 10, max_tokens=8)
  finally:
    sched.stop()


def test_batched_prefill_equals_prefill_one_at_a_time(model):
  """Queued prompts prefilled together (grouped by bucket, batch sizes 2 and 4, a prefix-cache
  hit and a long prompt on the single path): logits == each prompt prefilled alone, then the
  slots decode == decode.generate one at a time."""
  params, cfg = model
  eng = _engine(model, prefill_batch=(1, 2, 4))
  rng = np.random.default_rng(4)
  prompts = [rng.integers(5, 700, n).tolist() for n in (3, 14, 7, 12, 33, 2, 16, 5)]
  eng.prefill(params, prompts[7])                   # stored: a whole-prompt hit
  steps = eng.prefill_batch_steps(params, prompts + [[]])
  while True:
    try:
      next(steps)
    except StopIteration as done:
      results = done.value
      break
  assert isinstance(results[-1], ValueError) and results[7].cached == len(prompts[7])
  alone = _engine(model, prefix_entries=0)
  for p, got in zip(prompts, results):
    want = alone.prefill(params, p)
    assert got.length == len(p)
    assert model_backend.row_index(got.row) == E.padded_length(len(p), eng.ecfg)
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(want.logits), atol=1e-4)
  # Buckets 4 (3, 2), 8 (7, 5 is the hit), 16 (14, 12, 16): sizes 2, 1 and 4 compiled.
  assert model_backend.prefill_rows._cache_size() <= 3
  refs = [_reference(model, p, 6) for p in prompts]
  state = eng.init_state()
  ctl = E.Controls.idle(4, cfg.vocab_size)
  for group in (range(4), range(4, 8)):
    for slot, i in enumerate(group):
      state = eng.insert(results[i], state, slot)
    toks = []
    for _ in range(6):
      state, t = eng.generate(params, state, ctl)
      toks.append(np.asarray(t))
    toks = np.stack(toks, axis=1)
    for slot, i in enumerate(group):
      assert toks[slot].tolist() == refs[i], i
  # The scheduler hands the engine every queued prompt at once: the same tokens.
  sched = S.Scheduler(_engine(model, prefill_batch=(1, 2, 4), prefix_entries=0), _IdTokenizer())
  try:
    runs = [_run(sched, p, max_tokens=5) for p in prompts[:6]]
    for want, (req, events, done) in zip(refs, runs):
      assert done.wait(60)
      want = want[:5]
      cut = next((k for k, t in enumerate(want) if t == 3), 5)
      assert "".join(e.text for e in events if e.kind == "delta") == _IdTokenizer().decode(want[:cut])
  finally:
    sched.stop()
