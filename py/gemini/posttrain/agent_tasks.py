"""The tool and thinking task set, and SFT demonstrations built from programs.

Tool kinds (answered with a tool, or directly when no tools are offered):
  calc    "What is 473 * 29?"  3-digit +, -, x: too hard for a small model in its head
          -> calculator {"expression": "473 * 29"} -> "13717"
  bible   "Which book of the Bible says: "<KJV verse>"?"  -> search {"query": <verse>}
          -> "Proverbs: <verse>" -> "Proverbs"
  define  "Define WORD."  -> search {"query": WORD} -> "WORD: <gloss>" -> the gloss
Thinking kinds (answered after a program-written scratchpad, or directly):
  add     "What is 473 + 285?"  scratchpad: the columns right to left with carries
          "3+5=8 c0; 7+8=15 c1; 4+2+1=7 c0" -> "758"
  count   "How many letters are in 'river'?"  scratchpad: "r=1 i=2 v=3 e=4 r=5" -> "5"

Demonstrations (`demo`) are serving-format conversations (`gemini.serve.chat.Turn`s): a tool
demonstration calls the tool the program would call, executes it with the real Toolbox and
answers from the result; it is kept only if that answer passes the task's checker (a search
whose best hit is another word's gloss is dropped, never answered from knowledge the
transcript does not show). Direct demonstrations answer with the program's answer. Held-out
prompts are the CRC split of `tasks.is_heldout`, as in every stage.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from gemini.posttrain import tasks as tasks_lib
from gemini.posttrain import thinking
from gemini.posttrain import tools as tools_lib
from gemini.serve import chat as serve_chat

TOOL_KINDS = ("calc", "bible", "define")
THINK_KINDS = ("add", "count")
KINDS = TOOL_KINDS + THINK_KINDS


def sample(bank: tasks_lib.TaskBank, kind: str, rng: np.random.Generator) -> tasks_lib.Task:
  if kind in ("calc", "add"):
    a, b = (int(x) for x in rng.integers(100, 1000, size=2))
    op = "+" if kind == "add" else "+-*"[int(rng.integers(0, 3))]
    val = a + b if op == "+" else a - b if op == "-" else a * b
    return tasks_lib.Task(kind, f"What is {a} {op} {b}?", str(val))
  if kind == "count":
    w = bank.words[int(rng.integers(0, len(bank.words)))]
    return tasks_lib.Task(kind, f"How many letters are in '{w}'?", str(len(w)))
  if kind in ("bible", "define"):
    return bank.sample(kind, rng)
  raise ValueError(f"unknown agent task kind {kind!r}: expected one of {KINDS}")


def partition(bank, kinds: Sequence[str], n_train: int, n_heldout: int, seed: int):
  """(train, held-out) as `TaskBank.partition`: split by prompt CRC, held-out prompts distinct,
  kinds cycled."""
  return tasks_lib.partition_by_prompt(lambda kind, rng: sample(bank, kind, rng), kinds,
                                       n_train, n_heldout, seed)


def tool_call(task: tasks_lib.Task) -> dict:
  """The call a program makes for a tool task."""
  if task.kind == "calc":
    return {"name": "calculator", "arguments": {"expression": task.prompt[len("What is "):-1]}}
  if task.kind == "bible":
    return {"name": "search", "arguments": {"query": task.prompt.split('"')[1]}}
  if task.kind == "define":
    return {"name": "search", "arguments": {"query": task.prompt[len("Define "):-1]}}
  raise ValueError(f"{task.kind!r} is not a tool task kind {TOOL_KINDS}")


def answer_from(task: tasks_lib.Task, result: dict) -> str:
  """What a program answers from a tool result ("" on a tool error)."""
  text = result.get("content", "")
  if task.kind == "calc":
    return text
  head, _, body = text.partition(": ")
  return head if task.kind == "bible" else body


def scratchpad(task: tasks_lib.Task) -> str:
  if task.kind == "count":
    w = task.prompt.split("'")[1]
    return " ".join(f"{c}={i}" for i, c in enumerate(w, 1))
  if task.kind == "add":
    a, b = (x for x in task.prompt[len("What is "):-1].split(" + "))
    cols, carry = [], 0
    for da, db in zip(reversed(a), reversed(b)):
      s = int(da) + int(db) + carry
      cols.append(f"{da}+{db}" + (f"+{carry}" if carry else "") + f"={s} c{s // 10}")
      carry = s // 10
    return "; ".join(cols)
  raise ValueError(f"{task.kind!r} is not a thinking task kind {THINK_KINDS}")


def demo(task: tasks_lib.Task, mode: str,
         toolbox: tools_lib.Toolbox) -> Optional[Tuple[List[serve_chat.Turn], bool]]:
  """(turns, with_tools) of a demonstration in `mode` (tools | direct | think), or None when
  the program's tool use does not reach a checked answer."""
  user = serve_chat.Turn("user", task.prompt)
  if mode == "direct":
    return [user, serve_chat.Turn("assistant", task.answer)], False
  if mode == "think":
    text = f"{thinking.OPEN}{scratchpad(task)}{thinking.CLOSE}{task.answer}"
    return [user, serve_chat.Turn("assistant", text)], False
  if mode != "tools":
    raise ValueError(f"demonstration mode {mode!r}: expected tools, direct or think")
  call = tool_call(task)
  result = toolbox.run(call)
  answer = answer_from(task, result)
  if not answer or not tasks_lib.check(task.kind, answer, task.answer):
    return None
  return [user, serve_chat.Turn("assistant", "", tool_calls=[call]),
          serve_chat.Turn("tool", tool_result=result), serve_chat.Turn("assistant", answer)], True


def demonstrations(items: Sequence[tasks_lib.Task], toolbox) -> Tuple[list, dict]:
  """Alternating modes per kind: tool kinds tools/direct, thinking kinds think/direct.
  -> ([(turns, with_tools)], counts per mode and the number dropped)."""
  out, counts, seen = [], {"tools": 0, "direct": 0, "think": 0, "dropped": 0}, {}
  for t in items:
    i = seen[t.kind] = seen.get(t.kind, -1) + 1
    mode = "direct" if i % 2 else ("tools" if t.kind in TOOL_KINDS else "think")
    d = demo(t, mode, toolbox)
    if d is None:
      counts["dropped"] += 1
      continue
    counts[mode] += 1
    out.append(d)
  return out, counts
