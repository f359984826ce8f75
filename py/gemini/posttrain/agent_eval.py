"""Held-out evaluation of a policy on the agent tasks: tool kinds with and without tools, and
thinking kinds at each thinking budget (greedy, program-checked), plus the shared setup of
the agent stages (tokenizer with the thinking specials, chat format, toolbox, policy)."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np

from gemini.posttrain import agent_tasks, chat, episodes
from gemini.posttrain import generate as gen_lib
from gemini.posttrain import plots, thinking
from gemini.posttrain import tasks as tasks_lib
from gemini.posttrain import tools as tools_lib

BUDGETS = (0, 16, 32, 64, 128)


def smollm2_tokenizer():
  """SmolLM2's tokenizer (from its GGUF; the weights are not loaded)."""
  from gemini.checkpoints import gguf  # pylint: disable=import-outside-toplevel
  return gguf.build_tokenizer(gguf.open_reader(gguf.find_smollm2_gguf()))


class Setup:
  """Tokenizer (+ <think>/</think>), ChatFormat, TaskBank, Toolbox of one agent stage."""

  def __init__(self, tok=None, bank=None):
    self.tok = tok if tok is not None else smollm2_tokenizer()
    self.think_open, self.think_close = thinking.add_specials(self.tok)
    self.fmt = chat.ChatFormat.from_tokenizer(self.tok)
    self.bank = bank or tasks_lib.TaskBank.load()
    self.toolbox = tools_lib.Toolbox.from_bank(self.bank)
    self.ttok = thinking.TrackerTokenizer(self.tok, self.think_close + 1, self.think_open,
                                          self.think_close, frozenset([self.fmt.im_end]))


def policy(params, cfg, key: Optional[jax.Array] = None, temperature: float = 0.0,
           batch: int = 32, bucket: int = 128):
  """An episodes.Policy over gemini.model.decode (prompt widths rounded up to `bucket` so few
  shapes compile); sampled calls fold a call counter into `key`."""
  calls = [0]

  def run(prompts, max_new, stop_id):
    width = -(-max(len(p) for p in prompts) // bucket) * bucket
    k = None if key is None else jax.random.fold_in(key, calls[0])
    calls[0] += 1
    return gen_lib.generate(params, cfg, prompts, max_new, stop_id, key=k,
                            temperature=temperature, batch=batch, width=width)
  return run


def tool_accuracy(pol, s: Setup, items: Sequence[tasks_lib.Task], with_tools: bool,
                  max_new: int = 64) -> Dict[str, float]:
  return episodes.accuracy(episodes.run(pol, s.fmt, s.tok, s.toolbox, items, with_tools,
                                        max_new=max_new))


def think_accuracy(pol, s: Setup, items: Sequence[tasks_lib.Task], budget: int,
                   max_answer: int = 12) -> Dict[str, float]:
  prompts = [s.fmt.encode([{"role": "user", "content": t.prompt}], generation_prompt=True)[0]
             for t in items]
  outs = thinking.generate(pol, s.ttok, prompts, budget, max_answer, s.fmt.im_end)
  by: Dict[str, List[bool]] = {}
  for t, o in zip(items, outs):
    ans = o.answer[:-1] if o.answer and o.answer[-1] == s.fmt.im_end else o.answer
    by.setdefault(t.kind, []).append(tasks_lib.check(t.kind, s.tok.decode(ans), t.answer))
  res = {k: float(np.mean(v)) for k, v in sorted(by.items())}
  res["all"] = float(np.mean([x for v in by.values() for x in v]))
  res["thought_tokens"] = float(np.mean([len(o.thought) for o in outs]))
  res["forced"] = float(np.mean([o.forced for o in outs]))
  return res


def evaluate(params, cfg, s: Setup, held: Sequence[tasks_lib.Task],
             budgets: Sequence[int] = BUDGETS) -> dict:
  """{"with_tools", "without_tools", "thinking": {budget: acc}} on the held-out tasks."""
  pol = policy(params, cfg)
  tool_items = [t for t in held if t.kind in agent_tasks.TOOL_KINDS]
  think_items = [t for t in held if t.kind in agent_tasks.THINK_KINDS]
  out = {}
  if tool_items:
    out["with_tools"] = tool_accuracy(pol, s, tool_items, True)
    out["without_tools"] = tool_accuracy(pol, s, tool_items, False)
  if think_items:
    out["thinking"] = {str(b): think_accuracy(pol, s, think_items, b) for b in budgets}
  return out


def write_report(workdir: str, name: str, result: dict, title: str) -> None:
  """`workdir/<name>.json` and `<name>.png` (tools vs none per kind; accuracy vs budget)."""
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=1)
  plots.plot_agent(result, os.path.join(workdir, f"{name}.png"), title)
