"""The real lm-eval package runs the repo's local task through our adapter."""

import json
import os

import jax
import pytest

from gemini.config import ModelConfig
from gemini.eval import metrics, models
from gemini.eval.lm import GeminiLM
from gemini.eval.requests import Loglikelihood
from gemini.model import transformer

TASK_DIR = "py/gemini/eval/lm_eval_tasks"


def test_lm_eval_runs_local_task_through_adapter(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  lm_eval = pytest.importorskip("lm_eval")
  from lm_eval import evaluator
  from lm_eval.tasks import TaskManager
  from gemini.eval.lm_eval_adapter import GeminiHarnessLM

  cfg = ModelConfig(name="toy", vocab_size=300, d_model=32, n_layers=2, n_heads=2,
                    n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=128, dtype="float32")
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x,
                        transformer.init_params(cfg, jax.random.key(2)))
  lm = GeminiLM(params, cfg, models._ByteIds(cfg.vocab_size), batch_size=8)
  limit = 12
  out = evaluator.simple_evaluate(
      model=GeminiHarnessLM.from_lm(lm), tasks=["gemini_wordnet_mc"], limit=limit,
      task_manager=TaskManager(include_path=TASK_DIR), bootstrap_iters=0)
  got = out["results"]["gemini_wordnet_mc"]
  # The same items scored directly by our harness.
  with open(os.path.join(TASK_DIR, "gemini_wordnet_mc.jsonl")) as f:
    docs = [json.loads(l) for l in f][:limit]
  lps = [lp for lp, _ in lm.loglikelihood([Loglikelihood(d["context"], c)
                                           for d in docs for c in d["choices"]])]
  ours = [metrics.multiple_choice(lps[4 * i:4 * i + 4], d["choices"], d["gold"])
          for i, d in enumerate(docs)]
  assert got["acc,none"] == pytest.approx(sum(o["acc"] for o in ours) / limit)
  assert got["acc_norm,none"] == pytest.approx(sum(o["acc_norm"] for o in ours) / limit)
  # lm-eval's logged per-choice log-likelihoods are ours.
  logged = [s["resps"] for s in out["samples"]["gemini_wordnet_mc"]]
  flat = [r[0][0] for sample in logged for r in sample]
  assert len(flat) == len(lps)
  assert flat == pytest.approx(lps, abs=1e-5)
