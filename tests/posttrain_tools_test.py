"""Tools in the loop and thinking, without a model: the calculator against Python's fractions,
BM25 against a direct NumPy computation, the toolbox, the episode runner and the thinking
budget on scripted policies, and the programs' demonstrations in serving's format."""

import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest

from gemini.distill.testing import ThinkBytes
from gemini.posttrain import agent_tasks, bm25, calculator, chat, episodes, tasks, thinking
from gemini.posttrain import tools as tools_lib
from gemini.serve import chat as serve_chat

BANK = tasks.TaskBank(words=["apple", "stone", "river", "cloud", "bread", "chair"],
                      glosses={"apple": "a red fruit", "stone": "a hard rock"},
                      verses=[("Genesis", "In the beginning God created the heaven"),
                              ("Exodus", "Let my people go")])


@pytest.mark.parametrize("expr,want", [
    ("473 * 29", Fraction(473) * 29), ("1/3*3", Fraction(1)), ("-7/2", Fraction(-7, 2)),
    ("2^10", Fraction(2) ** 10), ("2**-2", Fraction(1, 4)), ("(1+2)*-3", Fraction(-9)),
    ("-2^2", -(Fraction(2) ** 2)), ("2^3^2", Fraction(2) ** 9), ("7 % 3", Fraction(1)),
    ("-7 % 3", Fraction(-7) % 3), ("0.1 + 0.2", Fraction(3, 10)), ("1,000 - 1", Fraction(999)),
    ("10 - 4 - 3", Fraction(3)), ("12 / 4 / 3", Fraction(1)), ("3 × 4 ÷ 6", Fraction(2)),
])
def test_calculator_matches_fractions(expr, want):
  assert calculator.evaluate(expr) == want


def test_calculator_formats_and_refuses():
  assert calculator.calculate("473 * 29") == "13717"
  assert calculator.calculate("1/3") == "0.333333"
  assert calculator.calculate("-1/8") == "-0.125"
  assert calculator.calculate("1/3000000") == "0"
  for bad in ("1/0", "3 +", "(1", "1)", "", "__import__('os')", "2^0.5", "9^99", "abs(1)",
              "1" * 300):
    with pytest.raises(calculator.CalcError):
      calculator.evaluate(bad)


def _bm25_dense(docs, query, k1=1.5, b=0.75):
  toks = [re.findall(r"[a-z0-9]+", d.lower()) for d in docs]
  vocab = sorted({t for d in toks for t in d})
  tf = np.array([[d.count(t) for t in vocab] for d in toks], float)       # [N, V]
  n, lengths = len(docs), tf.sum(1)
  df = (tf > 0).sum(0)
  idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
  q = sorted(set(re.findall(r"[a-z0-9]+", query.lower())) & set(vocab))
  cols = [vocab.index(t) for t in q]
  denom = tf[:, cols] + k1 * (1 - b + b * lengths[:, None] / lengths.mean())
  return (idf[cols] * tf[:, cols] * (k1 + 1) / denom).sum(1)


def test_bm25_equals_direct_numpy():
  docs = ["the cat sat on the mat", "a dog and a cat", "dogs chase cats all day long",
          "the mat was red", "Cat cat CAT", "nothing here"]
  index = bm25.BM25(docs)
  for q in ["cat", "the mat", "dog cat cat", "red mat day", "absent words", "CAT the"]:
    np.testing.assert_allclose(index.scores(q), _bm25_dense(docs, q), rtol=1e-12, atol=1e-12)
  best = index.search("cat", k=2)
  assert [j for j, _ in best] == list(np.argsort(-_bm25_dense(docs, "cat"), kind="stable")[:2])
  assert index.search("absent") == []


def test_toolbox_runs_calls():
  box = tools_lib.Toolbox.from_bank(BANK)
  assert box.run({"name": "calculator", "arguments": {"expression": "12*12"}}) == {
      "name": "calculator", "content": "144"}
  assert box.run({"name": "search", "arguments": {"query": "my people"}})["content"] == (
      "Exodus: Let my people go")
  assert box.run({"name": "search", "arguments": {"query": "apple"}})["content"] == (
      "apple: a red fruit")
  assert "error" in box.run({"name": "calculator", "arguments": {"expression": "1/0"}})
  assert "error" in box.run({"name": "calculator", "arguments": "1+1"})
  assert "error" in box.run({"name": "shell", "arguments": {}})


def _scripted(tok, script):
  """A policy that answers each prompt with the next reply in script[prompt's user text]."""
  seen = {}

  def policy(prompts, max_new, stop_id):
    outs = []
    for p in prompts:
      text = tok.decode(list(p))
      user = re.findall(r"user\n(.*?)\n", text)[0]
      i = seen[user] = seen.get(user, -1) + 1
      reply = script[user][min(i, len(script[user]) - 1)]
      outs.append(np.asarray((tok.encode(reply).ids + [stop_id])[:max_new], np.int32))
    return outs
  return policy


def test_episode_runner_on_a_scripted_policy():
  tok = ThinkBytes()
  fmt = chat.ChatFormat.from_tokenizer(tok)
  box = tools_lib.Toolbox.from_bank(BANK)
  call = '<tool_call>{"name": "calculator", "arguments": {"expression": "473 * 29"}}</tool_call>'
  script = {"What is 473 * 29?": [call, "13717"],
            "What is 1 + 1?": ["2"],
            "What is 2 + 2?": [call],                           # calls forever
            "What is 3 + 3?": ["x" * 100]}                      # never ends its turn
  items = [tasks.Task("calc", p, a) for p, a in [("What is 473 * 29?", "13717"),
                                                  ("What is 1 + 1?", "2"),
                                                  ("What is 2 + 2?", "4"),
                                                  ("What is 3 + 3?", "6")]]
  eps = episodes.run(_scripted(tok, script), fmt, tok, box, items, True, max_calls=2, max_new=90)
  e = eps[0]
  assert e.finish == "answer" and e.answer == "13717" and e.correct()
  assert e.calls == [{"name": "calculator", "arguments": {"expression": "473 * 29"}}]
  assert e.results == [{"name": "calculator", "content": "13717"}]
  # The token sequence is serving's rendering of the conversation, tool turn included.
  msgs = serve_chat.render(serve_chat.Job(e.turns, None, tools=tools_lib.DECLS),
                           episodes._Messages())
  assert msgs[-2] == {"role": "tool", "content": '<tool_result>' + json.dumps(
      {"name": "calculator", "content": "13717"}) + '</tool_result>'}
  want, model = fmt.encode(msgs)
  assert e.tokens == list(want[:-len(fmt.newline)])            # ends at the last <|im_end|>
  assert e.sampled == list(model[:-len(fmt.newline)])          # sampled = the model's turns
  assert "You can call these tools" in tok.decode(e.tokens)
  assert eps[1].finish == "answer" and eps[1].correct() and not eps[1].calls
  assert eps[2].finish == "calls" and len(eps[2].calls) == 2 and not eps[2].correct()
  assert eps[3].finish == "length" and not eps[3].correct()
  acc = episodes.accuracy(eps)
  assert acc["all"] == 0.5 and acc["calls"] == 0.75
  # Without tools the system turn declares none and a call is not parsed as one.
  no = episodes.run(_scripted(tok, script), fmt, tok, box, items[:1], False, max_calls=2,
                    max_new=90)[0]
  assert no.finish == "answer" and not no.calls and "You can call" not in tok.decode(no.tokens)


def _ttok(tok):
  return thinking.TrackerTokenizer(tok, 261, 259, 260, frozenset([258]))


def test_thinking_budget_forces_the_close_like_serving():
  tok = ThinkBytes()
  ttok = _ttok(tok)
  log = []

  def policy(prompts, max_new, stop_id):
    log.append((max_new, stop_id, [list(p) for p in prompts]))
    if stop_id == 260:                 # thinking: row 0 never closes, row 1 closes after 3
      return [np.full(max_new, 65, np.int32), np.asarray([66, 66, 66, 260], np.int32)]
    return [np.asarray([49, 258], np.int32)] * len(prompts)

  prompts = [np.asarray([1, 2, 3], np.int32), np.asarray([4, 5], np.int32)]
  out = thinking.generate(policy, ttok, prompts, 16, 8, 258)
  assert log[0][:2] == (16, 260) and log[0][2] == [[1, 2, 3, 259], [4, 5, 259]]
  assert out[0].thought == [65] * 16 and out[0].forced
  assert out[1].thought == [66, 66, 66] and not out[1].forced
  assert log[1][2] == [[1, 2, 3, 259] + [65] * 16 + [260], [4, 5, 259, 66, 66, 66, 260]]
  assert out[0].tokens(ttok) == [1, 2, 3, 259] + [65] * 16 + [260, 49, 258]
  log.clear()
  off = thinking.generate(policy, ttok, prompts, 0, 8, 258)     # budget 0: thinking off
  assert len(log) == 1 and log[0][2] == [[1, 2, 3], [4, 5]]
  assert off[0].thought == [] and off[0].tokens(ttok) == [1, 2, 3, 49, 258]


def test_demonstrations_are_checked_and_parse_as_serving_does():
  box = tools_lib.Toolbox.from_bank(BANK)
  rng = np.random.default_rng(0)
  items = [agent_tasks.sample(BANK, k, rng) for k in agent_tasks.KINDS * 4]
  demos, counts = agent_tasks.demonstrations(items, box)
  assert counts["tools"] and counts["think"] and counts["direct"]
  assert counts["tools"] + counts["think"] + counts["direct"] + counts["dropped"] == len(items)
  for turns, with_tools in demos:
    task = next(t for t in items if t.prompt == turns[0].text)
    final = turns[-1].text
    assert tasks.check(task.kind, final, task.answer), (task, final)
    if with_tools:
      msgs = episodes.messages(turns, True)
      calls = serve_chat.parse_tool_calls(msgs[2]["content"],
                                          episodes.job(turns, True))
      assert [(c["name"], c["arguments"]) for c in calls] == [
          (turns[1].tool_calls[0]["name"], turns[1].tool_calls[0]["arguments"])]
  add = tasks.Task("add", "What is 478 + 385?", "863")
  assert agent_tasks.scratchpad(add) == "8+5=13 c1; 7+8+1=16 c1; 4+3+1=8 c0"
  count = tasks.Task("count", "How many letters are in 'river'?", "5")
  assert agent_tasks.scratchpad(count) == "r=1 i=2 v=3 e=4 r=5"
  assert tasks.check("calc", "-809", "-809") and not tasks.check("calc", "809", "-809")
  assert math.isclose(len(tools_lib.DECLS), 2)
