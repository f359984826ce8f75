"""Tool-using episodes: generate until the model's turn ends, run its tool call, append the
result as a tool turn, continue; at most `max_calls` calls, then the next turn must answer.

Conversations are serving's (`gemini.serve.chat`): `Turn`s rendered by `chat.render` (tools
declared in the system turn by `tool_prompt`, a call as `<tool_call>{json}</tool_call>`, a
result as a `tool` turn `<tool_result>{json}</tool_result>`), and a model turn's calls are read
by `chat.parse_tool_calls` / `chat.finish_tools`, so what the policy learns is what serving
parses. Rendered messages are tokenised by posttrain's `ChatFormat` (ChatML specials).

Episodes run in lockstep: every round generates the next model turn of all unfinished
episodes in one batch (`policy(prompts, max_new, stop_id) -> completions`). Each episode
keeps its exact token sequence and which tokens the policy sampled (`sampled`), which is what
GRPO trains on; a turn is kept as sampled, never re-tokenised.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np

from gemini.posttrain import tasks as tasks_lib
from gemini.posttrain import tools as tools_lib
from gemini.serve import chat as serve_chat
from gemini.serve import request as request_lib

Policy = Callable[[List[np.ndarray], int, int], List[np.ndarray]]


class _Messages:
  """What `serve_chat.render` hands to its tokenizer: the rendered message list itself
  (serving's tokenizer would apply its chat template; ChatFormat does that here)."""
  tool_open, tool_close = "<tool_call>", "</tool_call>"

  @staticmethod
  def render_chat(messages, add_generation_prompt=True):
    del add_generation_prompt
    return messages


def job(turns: Sequence[serve_chat.Turn], with_tools: bool) -> serve_chat.Job:
  return serve_chat.Job(list(turns), request_lib.GenParams(),
                        tools=list(tools_lib.DECLS) if with_tools else [], tool_mode="auto")


def messages(turns: Sequence[serve_chat.Turn], with_tools: bool) -> List[dict]:
  """Serving's rendering of a conversation as [{"role", "content"}] (system turn with the
  tool declarations when `with_tools`)."""
  return serve_chat.render(job(turns, with_tools), _Messages())


@dataclasses.dataclass
class Episode:
  task: tasks_lib.Task
  with_tools: bool
  tokens: List[int]                      # the whole conversation so far
  sampled: List[bool]                    # token i was sampled by the policy
  turns: List[serve_chat.Turn]
  calls: List[dict] = dataclasses.field(default_factory=list)
  results: List[dict] = dataclasses.field(default_factory=list)
  answer: str = ""
  finish: str = ""                       # "" running | answer | length | calls

  @property
  def done(self) -> bool:
    return bool(self.finish)

  def correct(self) -> bool:
    return self.finish == "answer" and tasks_lib.check(self.task.kind, self.answer,
                                                        self.task.answer)


def start(fmt, task: tasks_lib.Task, with_tools: bool) -> Episode:
  turns = [serve_chat.Turn("user", task.prompt)]
  toks, _ = fmt.encode(messages(turns, with_tools), generation_prompt=True)
  return Episode(task, with_tools, [int(t) for t in toks], [False] * len(toks), turns)


def _tool_tail(fmt, result: dict) -> List[int]:
  """Tokens after a model turn's <|im_end|>: "\\n", the tool turn, the next model header."""
  msg = messages([serve_chat.Turn("tool", tool_result=result)], with_tools=False)
  toks, _ = fmt.encode(msg, generation_prompt=True)
  return list(fmt.newline) + [int(t) for t in toks]


def run(policy: Policy, fmt, tok, toolbox: tools_lib.Toolbox, items: Sequence[tasks_lib.Task],
        with_tools: bool, max_calls: int = 2, max_new: int = 48,
        max_tokens: Optional[int] = None) -> List[Episode]:
  """Runs one episode per task. A model turn that calls a tool (the first parsed call is
  executed) gets its result and another turn, up to max_calls calls; a turn without a call
  is the answer (tool-call text removed, as serving returns it). A turn cut at max_new ids,
  a call past max_calls, or a conversation longer than max_tokens ends the episode unanswered."""
  eps = [start(fmt, t, with_tools) for t in items]
  for _ in range(max_calls + 1):
    live = [e for e in eps if not e.done]
    if not live:
      break
    outs = policy([np.asarray(e.tokens, np.int32) for e in live], max_new, fmt.im_end)
    for e, out in zip(live, outs):
      out = [int(x) for x in out]
      e.tokens += out
      e.sampled += [True] * len(out)
      if not out or out[-1] != fmt.im_end:
        e.finish = "length"
        continue
      res = serve_chat.Result(text=tok.decode(out[:-1]))
      j = job(e.turns, e.with_tools)
      serve_chat.finish_tools(res, j)
      e.turns.append(serve_chat.Turn("assistant", res.text, tool_calls=[
          {"name": c["name"], "arguments": c["arguments"]} for c in res.tool_calls]))
      if not res.tool_calls:
        e.answer, e.finish = res.text, "answer"
        continue
      if len(e.calls) >= max_calls:
        e.finish = "calls"
        continue
      call = {"name": res.tool_calls[0]["name"], "arguments": res.tool_calls[0]["arguments"]}
      result = toolbox.run(call)
      e.calls.append(call)
      e.results.append(result)
      e.turns.append(serve_chat.Turn("tool", tool_result=result))
      tail = _tool_tail(fmt, result)
      e.tokens += tail
      e.sampled += [False] * len(tail)
      if max_tokens is not None and len(e.tokens) + max_new > max_tokens:
        e.finish = "length"
  for e in eps:
    if not e.done:
      e.finish = "calls"
  return eps


def accuracy(eps: Sequence[Episode]) -> dict:
  """Fraction correct per task kind and 'all', plus the mean number of tool calls."""
  by = {}
  for e in eps:
    by.setdefault(e.task.kind, []).append(e.correct())
  out = {k: float(np.mean(v)) for k, v in sorted(by.items())}
  out["all"] = float(np.mean([e.correct() for e in eps])) if eps else 0.0
  out["calls"] = float(np.mean([len(e.calls) for e in eps])) if eps else 0.0
  return out
