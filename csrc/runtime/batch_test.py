"""The batched multi-slot decode API of `csrc.runtime._runtime`: per-sequence states,
chunked prefill, decode_batch over sequences of different lengths, truncate and copy, against
each sequence decoded alone and against the JAX int4 reference."""

import threading

import jax
import numpy as np
import pytest

from csrc.runtime import _runtime
from gemini.config import ModelConfig
from gemini.export import export
from gemini.quant import test_util
from gemini.quant.test_util import random_params

# GQA (2 kv heads of 2 query heads each), silu, d_model off the 128 grid.
CFG = ModelConfig(name="batch_golden", vocab_size=320, d_model=80, n_layers=2, n_heads=4,
                  n_kv_heads=2, head_dim=20, d_ff=144, max_seq_len=128, activation="silu")
LENGTHS = (5, 11, 17, 3, 8, 20)  # 6 sequences: >= 4 takes the AMX tiles where the CPU has them
STEPS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  params = random_params(CFG, jax.random.key(3))
  path = str(tmp_path_factory.mktemp("gnb") / "batch.gnb")
  q = export.export(path, params, CFG, group_size=32, eos_id=-1)
  return path, q


def _prompts():
  rng = np.random.default_rng(11)
  return [[int(t) for t in rng.integers(0, CFG.vocab_size, n)] for n in LENGTHS]


def _alone(rt, prompt, steps, kv_f16):
  """One sequence on its own: prefill, then one-token prefill calls; (logits [steps+1, V], tokens)."""
  s = rt.new_state(64, kv_f16=kv_f16)
  logits = [rt.prefill(s, prompt)]
  tokens = []
  for _ in range(steps):
    tokens.append(int(np.argmax(logits[-1])))
    logits.append(rt.prefill(s, [tokens[-1]]))
  assert s.length == len(prompt) + steps
  return np.stack(logits), tokens


def _batched(rt, prompts, steps, kv_f16):
  states = [rt.new_state(64, kv_f16=kv_f16) for _ in prompts]
  logits = [[rt.prefill(s, p)] for s, p in zip(states, prompts)]
  tokens = [[] for _ in prompts]
  for _ in range(steps):
    nxt = [int(np.argmax(l[-1])) for l in logits]
    out = rt.decode_batch(states, nxt)
    assert out.shape == (len(prompts), CFG.vocab_size) and out.dtype == np.float32
    for i, t in enumerate(nxt):
      tokens[i].append(t)
      logits[i].append(out[i])
  assert [s.length for s in states] == [len(p) + steps for p in prompts]
  return [np.stack(l) for l in logits], tokens


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_batch_equals_each_sequence_alone(model, threads):
  path, q = model
  prompts = _prompts()
  for kernel in _runtime.available_kernels():
    for int8, kv_f16 in ((False, False), (True, True)):
      rt = _runtime.Runtime(path, threads=threads, kernel=kernel, int8_activations=int8, kv_f16=kv_f16)
      got, got_tokens = _batched(rt, prompts, STEPS, kv_f16)
      for i, p in enumerate(prompts):
        want, want_tokens = _alone(rt, p, STEPS, kv_f16)
        scale = np.max(np.abs(want))
        err = np.max(np.abs(got[i] - want)) / scale
        assert err <= 1e-5, (kernel, int8, i, err)
        assert got_tokens[i] == want_tokens, (kernel, int8, i)
        if not int8:  # the f32 path is the parity path: JAX's greedy tokens
          assert got_tokens[i] == test_util.greedy(q, p, CFG, STEPS), (kernel, i)


def test_decode_batch_matches_jax_logits(model):
  """Every row of a batched step against the JAX int4 forward of that row's whole sequence."""
  path, q = model
  prompts = _prompts()
  rt = _runtime.Runtime(path, threads=2, int8_activations=False, kv_f16=False)
  states = [rt.new_state(32, kv_f16=False) for _ in prompts]
  for s, p in zip(states, prompts):
    rt.prefill(s, p)
  nxt = [7, 300, 0, 1, 150, 319]
  out = rt.decode_batch(states, nxt)
  for i, p in enumerate(prompts):
    want = np.asarray(test_util.logits(q, p + [nxt[i]], CFG))[-1]
    assert np.max(np.abs(out[i] - want)) / np.max(np.abs(want)) <= 1e-3, i


def test_decode_batch_into_rows_of_an_array(model):
  """out=/rows=: each state's logits land in its row of the caller's array, as returned otherwise."""
  path, _ = model
  rt = _runtime.Runtime(path, threads=2, int8_activations=True, kv_f16=True)
  prompts = _prompts()
  a, b = ([rt.new_state(64) for _ in prompts] for _ in range(2))
  for s, t, p in zip(a, b, prompts):
    rt.prefill(s, p)
    rt.prefill(t, p)
  nxt = [1 + 3 * i for i in range(len(prompts))]
  want = rt.decode_batch(a, nxt)
  out = np.full((len(prompts) + 2, CFG.vocab_size), 7.0, np.float32)
  rows = [len(prompts) + 1 - i for i in range(len(prompts))]  # reversed; row 0 untouched
  assert rt.decode_batch(b, nxt, out=out, rows=rows) is out
  for i, r in enumerate(rows):
    np.testing.assert_array_equal(out[r], want[i])
  assert np.all(out[0] == 7.0)
  lengths = [t.length for t in b]
  with pytest.raises(ValueError, match="float32"):
    rt.decode_batch(b, nxt, out=out.astype(np.float64), rows=rows)
  with pytest.raises(ValueError, match="rows for"):
    rt.decode_batch(b, nxt, out=out, rows=rows[:-1])
  with pytest.raises(IndexError, match="outside out"):
    rt.decode_batch(b, nxt, out=out, rows=[len(out)] + rows[1:])
  with pytest.raises(ValueError, match="both"):
    rt.decode_batch(b, nxt, out=out)
  assert [t.length for t in b] == lengths  # refused calls change no state


def test_chunked_prefill_truncate_and_copy(model):
  path, _ = model
  rt = _runtime.Runtime(path, threads=2, int8_activations=True, kv_f16=True)
  rng = np.random.default_rng(5)
  a, b, c = ([int(t) for t in rng.integers(0, CFG.vocab_size, n)] for n in (9, 6, 4))

  def fresh(tokens):
    s = rt.new_state(40)
    return rt.prefill(s, tokens)

  # Chunked prefill == one prefill.
  s = rt.new_state(40)
  rt.prefill(s, a)
  np.testing.assert_allclose(rt.prefill(s, b), fresh(a + b), rtol=0, atol=1e-5)
  assert s.length == len(a) + len(b) and s.max_len == 40 and s.kv_f16
  # truncate + re-prefill == fresh prefill of the shared prefix plus the new suffix.
  s.truncate(len(a))
  assert s.length == len(a)
  np.testing.assert_allclose(rt.prefill(s, c), fresh(a + c), rtol=0, atol=1e-5)
  s.truncate(0)
  np.testing.assert_allclose(rt.prefill(s, b), fresh(b), rtol=0, atol=1e-5)
  # copy is an independent snapshot: each side continues on its own.
  s.truncate(0)
  rt.prefill(s, a)
  snap = s.copy()
  assert snap.length == len(a)
  ls = rt.decode_batch([s], [b[0]])[0]
  lc = rt.decode_batch([snap], [c[0]])[0]
  np.testing.assert_allclose(ls, fresh(a + b[:1]), rtol=0, atol=1e-5)
  np.testing.assert_allclose(lc, fresh(a + c[:1]), rtol=0, atol=1e-5)
  s.truncate(2)  # shrinking one leaves the other whole
  assert snap.length == len(a) + 1
  np.testing.assert_allclose(rt.prefill(snap, c[1:]), fresh(a + c), rtol=0, atol=1e-5)


def test_bad_calls_are_refused(model):
  path, _ = model
  rt = _runtime.Runtime(path, int8_activations=True, kv_f16=True)
  s, t = rt.new_state(4), rt.new_state(4)
  rt.prefill(s, [1, 2, 3])
  with pytest.raises(ValueError, match="same state"):
    rt.decode_batch([s, s], [1, 2])
  with pytest.raises(ValueError, match="2 states but 1 tokens"):
    rt.decode_batch([s, t], [1])
  with pytest.raises(IndexError, match="outside the vocabulary"):
    rt.decode_batch([s, t], [1, CFG.vocab_size])
  assert s.length == 3 and t.length == 0  # a refused step changes nothing
  rt.decode_batch([s], [4])
  with pytest.raises(IndexError, match="max_len=4"):
    rt.decode_batch([t, s], [1, 2])
  with pytest.raises(IndexError, match="max_len=4"):
    rt.prefill(t, [1, 2, 3, 4, 5])
  with pytest.raises(IndexError, match="truncate"):
    s.truncate(5)
  with pytest.raises(ValueError, match="at least one"):
    rt.prefill(t, [])
  other = _runtime.Runtime(path)
  with pytest.raises(ValueError, match="another Runtime"):
    other.decode_batch([t], [1])
  with pytest.raises(ValueError, match="max_len must be >= 1"):
    rt.new_state(0)
  assert s.length == 4 and t.length == 0


def test_prefill_batch_equals_each_prompt_alone(model):
  """Ragged prompts (and a mix of prompt chunks and single decode tokens) in one forward: each
  sequence's last-token logits == that sequence prefilled alone, then decoded on == alone."""
  path, _ = model
  prompts = _prompts()
  for kernel in _runtime.available_kernels():
    for int8, kv_f16 in ((False, False), (True, True)):
      rt = _runtime.Runtime(path, threads=2, kernel=kernel, int8_activations=int8, kv_f16=kv_f16)
      states = [rt.new_state(64, kv_f16=kv_f16) for _ in prompts]
      got = rt.prefill_batch(states, prompts)
      assert got.shape == (len(prompts), CFG.vocab_size) and got.dtype == np.float32
      assert [s.length for s in states] == [len(p) for p in prompts]
      # A second call mixes a chunk for some sequences with one token for others.
      more = [[(7 * i + j) % CFG.vocab_size for j in range(1 if i % 2 else 4)] for i in range(len(prompts))]
      got2 = rt.prefill_batch(states, more)
      alone_tokens = []
      for i, p in enumerate(prompts):
        want, want_tokens = _alone(rt, p, STEPS, kv_f16)
        alone_tokens.append(want_tokens)
        scale = np.max(np.abs(want[0]))
        assert np.max(np.abs(got[i] - want[0])) / scale <= 1e-5, (kernel, int8, i)
        s = rt.new_state(64, kv_f16=kv_f16)
        want2 = rt.prefill(s, p + more[i])
        assert np.max(np.abs(got2[i] - want2)) / np.max(np.abs(want2)) <= 1e-5, (kernel, int8, i)
      # Sequences prefilled together decode on as each alone does.
      fresh = [rt.new_state(64, kv_f16=kv_f16) for _ in prompts]
      logits = rt.prefill_batch(fresh, prompts)
      tokens = [[] for _ in prompts]
      for _ in range(STEPS):
        nxt = [int(np.argmax(l)) for l in logits]
        for i, t in enumerate(nxt):
          tokens[i].append(t)
        logits = rt.decode_batch(fresh, nxt)
      assert tokens == alone_tokens, (kernel, int8)


def test_prefill_batch_into_rows_and_refusals(model):
  path, _ = model
  rt = _runtime.Runtime(path, threads=2, int8_activations=True, kv_f16=True)
  prompts = _prompts()[:3]
  a, b = ([rt.new_state(32) for _ in prompts] for _ in range(2))
  want = rt.prefill_batch(a, prompts)
  out = np.full((5, CFG.vocab_size), 3.0, np.float32)
  assert rt.prefill_batch(b, prompts, out=out, rows=[4, 1, 2]) is out
  for i, r in enumerate([4, 1, 2]):
    np.testing.assert_array_equal(out[r], want[i])
  assert np.all(out[[0, 3]] == 3.0)
  s, t = rt.new_state(4), rt.new_state(4)
  with pytest.raises(ValueError, match="same state"):
    rt.prefill_batch([s, s], [[1], [2]])
  with pytest.raises(ValueError, match="2 states but 1 token lists"):
    rt.prefill_batch([s, t], [[1]])
  with pytest.raises(ValueError, match="has no tokens"):
    rt.prefill_batch([s, t], [[1], []])
  with pytest.raises(IndexError, match="outside the vocabulary"):
    rt.prefill_batch([s, t], [[1], [CFG.vocab_size]])
  with pytest.raises(IndexError, match="max_len=4"):
    rt.prefill_batch([s, t], [[1], [1, 2, 3, 4, 5]])
  with pytest.raises(ValueError, match="at least one"):
    rt.prefill_batch([], [])
  with pytest.raises(ValueError, match="rows for"):
    rt.prefill_batch([s], [[1]], out=out, rows=[0, 1])
  assert s.length == 0 and t.length == 0  # refused calls change no state


def test_calls_from_two_threads_equal_the_same_calls_one_after_another(model):
  """A server's scheduler thread decodes while another thread asks for a one-at-a-time
  reference (generate, logits): the calls share one thread pool, so each must wait for the
  other, and every answer equals the same call made alone."""
  path, _ = model
  rt = _runtime.Runtime(path, threads=2, int8_activations=True, kv_f16=True)
  prompts = _prompts()
  want_batched = _batched(rt, prompts, STEPS, True)
  want_gen = rt.generate(prompts[1], STEPS)
  want_logits = rt.logits(prompts[2])
  got, errors = {}, []

  def run(name, fn, reps=8):
    try:
      got[name] = [fn() for _ in range(reps)]
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run, args=("batched", lambda: _batched(rt, prompts, STEPS, True))),
             threading.Thread(target=run, args=("generate", lambda: rt.generate(prompts[1], STEPS))),
             threading.Thread(target=run, args=("logits", lambda: rt.logits(prompts[2])))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(300)
  assert not errors, errors
  for logits, tokens in got["batched"]:
    assert tokens == want_batched[1]
    for a, b in zip(logits, want_batched[0]):
      np.testing.assert_array_equal(a, b)
  assert all(g == want_gen for g in got["generate"])
  for l in got["logits"]:
    np.testing.assert_array_equal(l, want_logits)
