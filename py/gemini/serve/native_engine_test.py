"""The native engine, its NumPy sampler and the scheduler over it, against independent
references: the runtime's own one-sequence `generate` and whole-sequence `logits`, and the JAX
sampler's filter."""

import threading

import jax.numpy as jnp
import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.serve import backends, engine as E, native_engine as N, native_sampling, sampling
from gemini.serve import request as R
from gemini.serve import testing


@pytest.fixture(scope="module")
def gnb(tmp_path_factory):
  return testing.tiny_gnb(str(tmp_path_factory.mktemp("gnb")))


def _rt(path):
  return _runtime.Runtime(path, 2, int8_activations=True, kv_f16=True)


def _greedy_alone(rt, prompt, n):
  return list(rt.generate(prompt, n, 0.0, 0, 1.0, 0, False))


def test_batched_greedy_equals_generate_with_joins_and_leaves(gnb):
  path, _ = gnb
  rt = _rt(path)
  eng = N.NativeEngine(rt, N.NativeConfig(n_slots=4, max_len=160, chunk=16, prefix_entries=0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(5, 600, n).tolist() for n in (3, 17, 40, 9, 33, 16)]
  lengths = [12, 5, 9, 12, 3, 7]
  refs = [_greedy_alone(rt, p, n) for p, n in zip(prompts, lengths)]
  state = eng.init_state()
  ctl = E.Controls.idle(4, eng.vocab)
  out = {i: [] for i in range(len(prompts))}
  owner, pending, step = {}, list(range(len(prompts))), 0
  while pending or owner:
    for slot in range(4):
      if slot not in owner and pending and step >= 2 * pending[0]:
        i = pending.pop(0)
        state = eng.insert(eng.prefill(None, prompts[i]), state, slot)
        owner[slot] = i
    state, toks = eng.generate(None, state, ctl)
    for slot, i in list(owner.items()):
      out[i].append(int(toks[slot]))
      if len(out[i]) == lengths[i]:
        del owner[slot]
        state = eng.release(state, slot)
    step += 1
  assert [out[i] for i in range(len(prompts))] == refs


def test_prefix_cache_reuses_state_and_keeps_logits(gnb):
  path, _ = gnb
  rt = _rt(path)
  eng = N.NativeEngine(rt, N.NativeConfig(n_slots=2, max_len=128, chunk=16, prefix_entries=4))
  ref = _runtime.Runtime(path, 2, int8_activations=True, kv_f16=True)
  base = list(range(10, 48))
  first = eng.prefill(None, base)
  assert first.cached == 0
  follow = base + [7, 8, 9]
  second = eng.prefill(None, follow)
  assert second.cached == len(base) and eng.prefix_cache.stats.tokens_saved == len(base)
  # Shares 35 tokens with `base`: its state copy is truncated to 35 and the rest prefilled.
  odd = base[:35] + [1, 2]
  third = eng.prefill(None, odd)
  assert third.cached == 35
  again = eng.prefill(None, follow)                 # the whole prompt stored: nothing prefilled
  assert again.cached == len(follow)
  for p, got in ((follow, second), (odd, third), (follow, again)):
    want = ref.logits(p)[-1]
    np.testing.assert_allclose(got.logits, want, atol=2e-2 * np.abs(want).max())
  # The reused states decode on: the same greedy tokens as the runtime's own loop.
  state = eng.insert(third, eng.init_state(), 0)
  toks = []
  for _ in range(6):
    state, t = eng.generate(None, state, E.Controls.idle(2, eng.vocab))
    toks.append(int(t[0]))
  assert toks == _greedy_alone(ref, odd, 6)


def test_prefill_batch_steps_equal_prefill_one_at_a_time(gnb):
  """Prompts prefilled together (rounds over a small token budget, a prefix-cache hit and a
  refused prompt among them) == each prefilled alone: logits, then the same greedy tokens."""
  path, _ = gnb
  rt = _rt(path)
  eng = N.NativeEngine(rt, N.NativeConfig(n_slots=6, max_len=96, chunk=8, prefill_chunks=2,
                                          prefix_entries=4))
  ref = _runtime.Runtime(path, 2, int8_activations=True, kv_f16=True)
  rng = np.random.default_rng(7)
  prompts = [rng.integers(5, 600, n).tolist() for n in (3, 30, 11, 1, 19)]
  eng.prefill(None, prompts[2])                     # stored: the third prompt is a whole hit
  batch = prompts[:3] + [[]] + prompts[3:] + [prompts[1][:12] + [9, 9]]
  steps = eng.prefill_batch_steps(None, batch)
  rounds = 0
  while True:
    try:
      next(steps)
      rounds += 1
    except StopIteration as done:
      results = done.value
      break
  # 3 + 30 + 1 + 19 + 14 = 67 tokens to run at chunk = 8 a round (the hit runs none).
  assert rounds + 1 == 9
  assert isinstance(results[3], ValueError) and "empty" in str(results[3])
  assert results[2].cached == len(prompts[2])
  good = [(p, r) for p, r in zip(batch, results) if p]
  for p, got in good:
    assert got.length == len(p) and got.row.length == len(p)
    want = ref.logits(p)[-1]
    np.testing.assert_allclose(got.logits, want, atol=2e-2 * np.abs(want).max())
  state = eng.init_state()
  for slot, (_, got) in enumerate(good):
    state = eng.insert(got, state, slot)
  toks = []
  for _ in range(6):
    state, t = eng.generate(None, state, E.Controls.idle(6, eng.vocab))
    toks.append(t[:len(good)].copy())
  toks = np.stack(toks, axis=1)
  for slot, (p, _) in enumerate(good):
    assert toks[slot].tolist() == _greedy_alone(ref, p, 6), slot


def test_numpy_filter_matches_the_jax_sampler():
  rng = np.random.default_rng(3)
  for k, p in ((0, 1.0), (5, 1.0), (0, 0.7), (9, 0.5), (1, 1.0), (0, 0.05)):
    lg = rng.normal(size=200).astype(np.float32) * 3
    want = np.asarray(sampling._filter_row(jnp.asarray(lg), jnp.int32(k), jnp.float32(p))) > -1e29
    got = native_sampling.filter_row(lg, k, p) > -1e29
    np.testing.assert_array_equal(got, want, err_msg=f"top_k={k} top_p={p}")


def test_numpy_draws_follow_the_distribution_and_masks():
  rng = np.random.default_rng(4)
  lg = rng.normal(size=12).astype(np.float32)
  probs = np.exp(lg - lg.max())
  probs /= probs.sum()
  counts = np.bincount([native_sampling.draw(lg, 7, c) for c in range(6000)], minlength=12)
  assert np.abs(counts / 6000 - probs).max() < 0.02, (counts / 6000, probs)
  # Masks, greedy ties (first index), forced tokens, one row's draw independent of the batch.
  b, v = 3, 70
  logits = rng.normal(size=(b, v)).astype(np.float32)
  logits[1, [4, 40]] = 9.0
  mask = sampling.all_allowed(b, v)
  allowed = [3, 33, 66]
  mask[0] = 0
  for t in allowed:
    mask[0, t // 32] |= np.int32(1 << (t % 32))
  args = dict(temperature=np.array([1.0, 0.0, 1.0], np.float32), top_k=np.zeros(b, np.int32),
              top_p=np.ones(b, np.float32), seeds=np.array([1, 2, 3], np.uint32),
              counters=np.array([0, 5, 9], np.int32), mask_bits=mask,
              forced=np.array([-1, -1, 17], np.int32))
  out = native_sampling.sample_rows(logits, **args)
  assert out[0] in allowed and out[1] == 4 and out[2] == 17
  alone = native_sampling.sample_rows(logits[:1], **{k: a[:1] for k, a in args.items()})
  assert alone[0] == out[0]
  some = native_sampling.sample_rows(logits, **args, rows=[2, 1])  # a subset, in any order
  assert some[0] == 0 and some[1] == 4 and some[2] == 17
  greedy = dict(args, temperature=np.zeros(b, np.float32), mask_bits=sampling.all_allowed(b, v),
                forced=np.full(b, -1, np.int32))
  np.testing.assert_array_equal(native_sampling.sample_rows(logits, **greedy),
                                np.argmax(logits, axis=1))  # the batched argmax path
  np.testing.assert_array_equal(native_sampling.unpack_mask(mask[0], v),
                                np.asarray(sampling.unpack_mask(jnp.asarray(mask[:1]), v))[0])


def _collect(be, reqs):
  """Submits (tokens, GenParams) pairs, staggered; -> [(token ids, finish_reason)]."""
  done = [threading.Event() for _ in reqs]
  texts, reasons = [[] for _ in reqs], [None] * len(reqs)

  def emitter(i):
    def emit(ev):
      if ev.kind == "delta":
        texts[i].append(ev.text)
      else:
        reasons[i] = ev.finish_reason
        done[i].set()
    return emit

  for i, (toks, params) in enumerate(reqs):
    be.submit(R.Request(toks, params, emitter(i)))
    if i % 2:
      done[i - 1].wait(30)         # later requests join while earlier ones run
  for d in done:
    assert d.wait(120)
  return ["".join(t) for t in texts], reasons


def test_scheduler_on_native_backend(gnb):
  path, tok = gnb
  be = backends.NativeBackend(path, threads=2, model_id="tiny", tokenizer=tok,
                              ecfg=N.NativeConfig(n_slots=3, max_len=256, chunk=8))
  try:
    rt = be.rt
    prompts = [tok.encode(tok.render_chat([{"role": "user", "content": q}]))
               for q in ("Hello there", "What is the weather like?", "Paris", "json", "a cat")]
    # Greedy, no stop: each stream equals the runtime's one-at-a-time generate decoded.
    params = [R.GenParams(max_tokens=n, temperature=0.0) for n in (9, 4, 12, 6, 8)]
    texts, reasons = _collect(be, list(zip(prompts, params)))
    for p, prm, text, reason in zip(prompts, params, texts, reasons):
      ref = _greedy_alone(rt, p, prm.max_tokens)
      cut = next((i for i, t in enumerate(ref) if t in tok.eos_ids), len(ref))
      assert text == tok.decode(ref[:cut])
      assert reason == ("stop" if cut < len(ref) else "length")
    # Seeded sampling: the same seed gives the same text alone and batched with others.
    hot = R.GenParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=11)
    alone, _ = _collect(be, [(prompts[0], hot)])
    mixed, _ = _collect(be, [(prompts[1], R.GenParams(max_tokens=10, temperature=1.0, seed=3)),
                             (prompts[0], hot),
                             (prompts[2], R.GenParams(max_tokens=10, temperature=0.0))])
    assert mixed[1] == alone[0]
    # Stop sequences cut the text; a cancelled request ends as cancelled.
    full = texts[2]
    if len(full) > 3:
      stop = full[2:4]
      cut, reason = _collect(be, [(prompts[2], R.GenParams(max_tokens=12, stop=(stop,)))])
      assert cut[0] == full[:full.find(stop)] and reason[0] == "stop"
    # Submitted at once: prefilled together in rounds, each stream still == generate alone.
    together = [R.Request(p, R.GenParams(max_tokens=7, temperature=0.0), lambda e: None)
                for p in prompts]
    outs = [[] for _ in prompts]
    evs = [threading.Event() for _ in prompts]
    for i, rq in enumerate(together):
      rq.emit = (lambda i: lambda e: outs[i].append(e) if e.kind == "delta" else evs[i].set())(i)
    for rq in together:
      be.submit(rq)
    for i, p in enumerate(prompts):
      assert evs[i].wait(60)
      ref = _greedy_alone(rt, p, 7)
      cut = next((k for k, t in enumerate(ref) if t in tok.eos_ids), len(ref))
      assert "".join(e.text for e in outs[i]) == tok.decode(ref[:cut]), i
    ev = threading.Event()
    got = []
    req = R.Request(prompts[0], R.GenParams(max_tokens=200),
                    lambda e: (got.append(e), ev.set() if e.kind == "done" else None))
    req.cancel()
    be.submit(req)
    assert ev.wait(30) and got[-1].finish_reason == "cancelled"
    assert be.stats()["backend"] == "native"
  finally:
    be.stop()
