"""The harness on the native runtime against independent references: the JAX model reading the
same .gnb (log-likelihoods) and the runtime's own one-sequence `generate` (greedy texts)."""

import numpy as np
import pytest

from gemini.eval.lm import GeminiLM
from gemini.eval.native_lm import NativeLM
from gemini.eval.requests import GenerateUntil, Loglikelihood, LoglikelihoodRolling
from gemini.eval.tokenizer import RuntimeText
from gemini.export import gnb
from gemini.serve import gnb_params, testing

TEXTS = ["the quick brown fox", "in the beginning", "a b c d e f", "hello world, again",
         "numbers 1 2 3 and more words"]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
  return testing.tiny_gnb(str(tmp_path_factory.mktemp("gnb")))[0]


def test_loglikelihoods_equal_the_jax_model_on_the_same_file(path):
  native = NativeLM(path, int8_activations=False, batch_size=4)
  params, cfg = gnb_params.params_from_gnb(gnb.read(path))
  ref = GeminiLM(params, cfg, native.tokenizer, batch_size=4)
  reqs = [Loglikelihood(t, " again and again") for t in TEXTS]
  got, want = native.loglikelihood(reqs), ref.loglikelihood(reqs)
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-3)
  assert [g[1] for g in got] == [w[1] for w in want]
  rolling = [LoglikelihoodRolling(" ".join(TEXTS) * 3)]
  np.testing.assert_allclose(native.loglikelihood_rolling(rolling, stride=40),
                             ref.loglikelihood_rolling(rolling, stride=40), rtol=1e-4)


def test_batched_greedy_generation_equals_the_runtimes_one_at_a_time_generate(path):
  native = NativeLM(path, batch_size=3, check_every=3)
  tok: RuntimeText = native.tokenizer
  got = native.generate_until([GenerateUntil(t, (), 10, 0.0, 1.0) for t in TEXTS])
  bos = [] if tok.bos_id is None else [tok.bos_id]
  for text, out in zip(TEXTS, got):
    ids = list(native.rt.generate(bos + tok.encode(text), 10, 0.0, 0, 1.0, 0, False))
    if tok.eos_id in ids:
      ids = ids[:ids.index(tok.eos_id)]
    assert out == tok.decode(ids)


def test_stop_strings_cut_the_text_and_sampling_ignores_the_batch(path):
  native = NativeLM(path, batch_size=4)
  full = native.generate_until([GenerateUntil(TEXTS[0], (), 12, 0.0, 1.0)])[0]
  stop = full[len(full) // 2:len(full) // 2 + 2]
  assert stop.strip(), f"the tiny model's text {full!r} has no stop string to cut at"
  cut = native.generate_until([GenerateUntil(TEXTS[0], (stop,), 12, 0.0, 1.0)])[0]
  assert cut == full[:full.index(stop)]
  reqs = [GenerateUntil(t, (), 8, 0.8, 0.95, seed=7) for t in TEXTS]
  four = native.generate_until(reqs)
  native.batch_size = 1
  assert native.generate_until(reqs) == four
  other_seed = native.generate_until([GenerateUntil(t, (), 8, 0.8, 0.95, seed=8) for t in TEXTS])
  assert other_seed != four
