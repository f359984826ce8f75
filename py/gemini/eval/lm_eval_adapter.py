"""Our models inside the real lm-evaluation-harness (PyPI lm-eval, which needs no PyTorch).

    tools/bazel run //py/gemini/eval:lm_eval -- run --model gemini \\
        --model_args model=gguf:smollm2 --tasks gemini_wordnet_mc \\
        --include_path py/gemini/eval/lm_eval_tasks

`--model_args` keys: model (a harness spec, see models.py), config, tokenizer, max_len,
batch_size. lm-eval's Instances are turned into our request types one to one.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gemini.eval import models
from gemini.eval.requests import GenerateUntil, Loglikelihood, LoglikelihoodRolling


@register_model("gemini")
class GeminiHarnessLM(LM):

  def __init__(self, model: str = "gguf:smollm2", config: str = "", tokenizer: str = "",
               max_len: int = 0, batch_size=8, **_ignored):
    super().__init__()
    self.lm = models.load_model(model, config=config, tokenizer=tokenizer,
                                batch_size=int(batch_size or 8), max_len=int(max_len) or None)

  @classmethod
  def from_lm(cls, lm) -> "GeminiHarnessLM":
    """Wraps an existing gemini.eval.lm.GeminiLM."""
    self = cls.__new__(cls)
    LM.__init__(self)
    self.lm = lm
    return self

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    return self.lm.loglikelihood([Loglikelihood(*r.args) for r in requests])

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    return self.lm.loglikelihood_rolling([LoglikelihoodRolling(r.args[0]) for r in requests])

  def generate_until(self, requests, disable_tqdm: bool = False):
    reqs = []
    for r in requests:
      context, kw = r.args
      until = kw.get("until", ())
      until = (until,) if isinstance(until, str) else tuple(until)
      temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", True) else 0.0
      reqs.append(GenerateUntil(context, until, int(kw.get("max_gen_toks", 128)), temp,
                                float(kw.get("top_p", 1.0))))
    return self.lm.generate_until(reqs)
