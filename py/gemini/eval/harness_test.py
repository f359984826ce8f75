"""The harness against direct forwards of a toy model, and metrics against closed forms."""

import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini.config import ModelConfig
from gemini.data import tokenizer as sp_tokenizer
from gemini.eval import humaneval, metrics, models
from gemini.eval.lm import GeminiLM
from gemini.eval.requests import GenerateUntil, Loglikelihood, LoglikelihoodRolling
from gemini.model import decode, transformer
from gemini.train import checkpoint as ckpt_lib
from gemini.train.trainer import save_params_npz

CFG = ModelConfig(name="toy", vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                  head_dim=16, d_ff=64, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def lm():
  params = transformer.init_params(CFG, jax.random.key(1))
  # Sharpen the toy model so greedy paths and log-probs are far from uniform.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, params)
  return GeminiLM(params, CFG, models._ByteIds(CFG.vocab_size), batch_size=4)


def direct_logprobs(lm, ids):
  """log p(ids[i] | ids[:i]) for i >= 1 from one unpadded forward (NumPy log-softmax)."""
  tok = jnp.asarray([ids[:-1]], jnp.int32)
  logits, _ = transformer.forward(lm.params, {"tokens": tok}, CFG)
  lg = np.asarray(logits[0], np.float64)
  lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
  lp = lg[np.arange(len(ids) - 1), ids[1:]] - lse
  return lp, lg.argmax(-1) == np.asarray(ids[1:])


def test_loglikelihood_equals_direct_forward(lm):
  reqs = [Loglikelihood("The cat sat on the", " mat"), Loglikelihood("", "hello"),
          Loglikelihood("a longer context with several words in it and", " an end.")]
  got = lm.loglikelihood(reqs)
  for r, (lp, greedy) in zip(reqs, got):
    ctx = [1] + lm.tokenizer.encode(r.context)
    cont = lm.tokenizer.encode(r.continuation)
    ref, is_max = direct_logprobs(lm, ctx + cont)
    n = len(cont)
    assert lp == pytest.approx(ref[-n:].sum(), abs=1e-4)
    assert greedy == bool(is_max[-n:].all())
  assert all(lp < 0 for lp, _ in got)


def test_trailing_space_moves_to_continuation(lm):
  a = lm.loglikelihood([Loglikelihood("The cat ", "sat")])[0][0]
  b = lm.loglikelihood([Loglikelihood("The cat", " sat")])[0][0]
  assert a == pytest.approx(b, abs=1e-6)


def test_rolling_single_window_equals_full_forward(lm):
  text = "In the beginning was the word."
  ids = [1] + lm.tokenizer.encode(text)
  ref, _ = direct_logprobs(lm, ids)
  (lp, n), = lm.rolling_scores([LoglikelihoodRolling(text)])
  assert n == len(ids) - 1
  assert lp == pytest.approx(ref.sum(), abs=1e-4)


@pytest.mark.parametrize("stride", [None, 24])
def test_rolling_windows_cover_each_token_once(lm, stride):
  text = "A text longer than the toy model's sixty-four token window, so it needs two."
  ids = [1] + lm.tokenizer.encode(text)
  assert CFG.max_seq_len < len(ids) < 2 * CFG.max_seq_len
  # Reference: token i scored with the (at most max_len) tokens before the end of its window.
  m, s = CFG.max_seq_len, stride or CFG.max_seq_len
  want = 0.0
  for a in range(1, len(ids), s):
    b = min(a + s, len(ids))
    lo = max(0, b - 1 - m)
    lp, _ = direct_logprobs(lm, ids[lo:b])
    want += lp[a - lo - 1:].sum()
  (lp, n), = lm.rolling_scores([LoglikelihoodRolling(text)], stride=stride)
  assert n == len(ids) - 1
  assert lp == pytest.approx(want, abs=1e-3)


def test_generate_until_greedy_matches_decode_generate(lm):
  prompts = ["Once upon a time", "ab"]
  got = lm.generate_until([GenerateUntil(p, until=(), max_gen_toks=12) for p in prompts])
  for p, text in zip(prompts, got):
    ids = jnp.asarray([[1] + lm.tokenizer.encode(p)], jnp.int32)
    ref = np.asarray(decode.generate(lm.params, ids, CFG, 12))[0]
    assert text == lm.tokenizer.decode(ref)
  # A stop string that occurs cuts the text just before it.
  full = got[0]
  stop = full[3:5]
  cut = lm.generate_until([GenerateUntil(prompts[0], until=(stop,), max_gen_toks=12)])[0]
  assert cut == full[:full.find(stop)]


def test_bos_prefix_not_doubled(lm):
  assert lm._with_prefix([5, 6]) == [1, 5, 6]
  assert lm._with_prefix([1, 5, 6]) == [1, 5, 6]          # context began with the BOS token


def test_generation_without_bos_matches_decode_generate(lm):
  bare = GeminiLM(lm.params, CFG, lm.tokenizer, batch_size=4, bos_in_generation=False)
  got = bare.generate_until([GenerateUntil("Once upon", until=(), max_gen_toks=8)])[0]
  ids = jnp.asarray([lm.tokenizer.encode("Once upon")], jnp.int32)
  assert got == lm.tokenizer.decode(np.asarray(decode.generate(lm.params, ids, CFG, 8))[0])


def test_humaneval_chat_context_written_out():
  template = ("{% for message in messages %}<|im_start|>{{message['role']}}\n"
              "{{message['content']}}<|im_end|>\n{% endfor %}")
  prob = {"prompt": "def f(x):\n    \"\"\"Twice x.\"\"\"\n"}
  assert humaneval.context(prob, "raw") == prob["prompt"]
  assert humaneval.context(prob, "strip") == 'def f(x):\n    """Twice x."""'
  body = "\n    return 2 * x"
  assert humaneval.program(dict(prob, test="assert f(2) == 4", entry_point="f"), body,
                           "strip").startswith('def f(x):\n    """Twice x."""\n    return 2 * x\n')
  want = ("<|im_start|>user\nComplete the following Python function. Reply with the whole "
          "function in a ```python code block.\n\n```python\ndef f(x):\n    \"\"\"Twice x."
          "\"\"\"\n```<|im_end|>\n<|im_start|>assistant\n```python\ndef f(x):\n"
          "    \"\"\"Twice x.\"\"\"")
  assert humaneval.context(prob, "chat", template) == want
  with pytest.raises(ValueError, match="chat template"):
    humaneval.context(prob, "chat", "")


def test_multiple_choice_and_perplexity_hand_cases():
  # acc picks the largest sum; acc_norm divides by bytes: -6/6 = -1 beats -2/1.
  assert metrics.multiple_choice([-2.0, -6.0], ["a", "bbbbbb"], 0) == {"acc": 1.0, "acc_norm": 0.0}
  assert metrics.multiple_choice([-2.0, -6.0], ["a", "bbbbbb"], 1) == {"acc": 0.0, "acc_norm": 1.0}
  p = metrics.perplexity([-10.0, -6.0], [4, 4], ["abcd", "efgh"])
  assert p["nats_per_token"] == pytest.approx(2.0)
  assert p["bits_per_byte"] == pytest.approx(16.0 / (8 * math.log(2)))
  with pytest.raises(ValueError):
    metrics.multiple_choice([0.0], ["a", "b"], 0)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (10, 3, 2), (10, 3, 10),
                                   (20, 1, 5), (200, 17, 10), (7, 7, 3), (10, 0, 10)])
def test_pass_at_k_equals_closed_form(n, c, k):
  want = 1.0 - math.comb(n - c, k) / math.comb(n, k)
  assert metrics.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_hand_values():
  assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)          # c/n
  assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)          # 1 - C(3,2)/C(4,2) = 1-3/6
  with pytest.raises(ValueError):
    metrics.pass_at_k(5, 6, 1)


def test_npz_roundtrip(tmp_path, lm):
  host = jax.device_get(lm.params)
  save_params_npz(host, str(tmp_path / "p.npz"))
  back = models.params_from_npz(str(tmp_path / "p.npz"), CFG)
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="shape"):
    models.params_from_npz(str(tmp_path / "p.npz"), CFG.replace(d_model=48))


def test_checkpoint_model_needs_only_its_directory(tmp_path):
  """A checkpoint records its config and tokenizer: `--model=checkpoint:DIR` alone loads it."""
  texts = [open(f, encoding="utf-8").read() for f in sorted(glob.glob(
      os.path.join(os.path.dirname(os.__file__), "json", "*.py")))]
  cfg = CFG.replace(vocab_size=600)
  spm_path = sp_tokenizer.train(texts, str(tmp_path / "tok"), vocab_size=cfg.vocab_size,
                                max_sentences=5000)
  params = transformer.init_params(cfg, jax.random.key(5))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ck.save(3, {"params": params, "step": jnp.int32(3)}, {"step": 3},
          model=ckpt_lib.describe_model(cfg, spm_path))
  ck.close()
  got = models.load_model(f"checkpoint:{tmp_path / 'run'}")
  assert got.cfg == cfg.replace(dtype="float32")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  text = "import json, the decoder"
  assert got.tokenizer.encode(text) == sp_tokenizer.Tokenizer(spm_path).encode(
      text, bos=False, eos=False)
