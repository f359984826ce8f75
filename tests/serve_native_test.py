"""The real openai and google-genai clients against a server on the native backend (a tiny
random model exported to an int4 .gnb in-test, served by csrc/runtime with no JAX on the hot
path): chat and streaming agree, concurrent greedy streams equal one-at-a-time ones, structured
output and forced tool calls validate, thinking budgets hold, a multi-turn chat hits the prefix
cache."""

import concurrent.futures
import json

import openai
import pytest
from google import genai
from google.genai import types

from gemini.serve import app as app_lib
from gemini.serve import backends, loading, metrics as metrics_lib, native_engine, testing
from gemini.serve.testing import PERSON_SCHEMA as PERSON, WEATHER_TOOL as WEATHER, check_person


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  path, _ = testing.tiny_gnb(str(tmp_path_factory.mktemp("gnb")))
  tok = loading.gnb_tokenizer(path)             # the SentencePiece model stored in the file
  m = metrics_lib.Metrics()
  be = backends.NativeBackend(path, threads=2, model_id="tiny", tokenizer=tok, metrics=m,
                              ecfg=native_engine.NativeConfig(n_slots=4, max_len=512, chunk=16))
  srv = testing.ServerThread(app_lib.create_app(be, app_lib.ServerConfig(model_id="tiny"), m))
  yield be, srv
  srv.stop()
  be.stop()


@pytest.fixture(scope="module")
def oa(server):
  return openai.OpenAI(base_url=server[1].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def gm(server):
  return genai.Client(api_key="unused", http_options=types.HttpOptions(
      base_url=server[1].url, api_version="v1beta"))


def test_chat_stream_and_greedy_batched_equals_alone(oa, server):
  msgs = [{"role": "user", "content": "Hello there, how are you?"}]
  r = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
  chunks = list(oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == r.choices[0].message.content
  assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
  questions = ["What is the weather like?", "Hello world!", "The capital of France is",
               "Tell me about Paris.", "json", "a cat", "rain", "clocks"]

  def ask(q, n):
    r = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                   max_tokens=n, temperature=0)
    return r.choices[0].message.content

  lengths = [6, 14, 9, 20, 4, 11, 16, 7]      # streams leave at different steps
  alone = [ask(q, n) for q, n in zip(questions, lengths)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(pool.map(ask, questions, lengths))
  assert together == alone
  assert server[0].stats()["steps"] > 0


def test_structured_output_and_tool_calls_validate(oa, gm):
  for seed in range(3):
    r = oa.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a person as JSON"}], max_tokens=80,
        temperature=1.0, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    check_person(json.loads(r.choices[0].message.content))
  msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
  r = oa.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER],
                                 tool_choice="required", max_tokens=100, temperature=0)
  call = r.choices[0].message.tool_calls[0]
  args = json.loads(call.function.arguments)
  assert call.function.name == "get_weather" and args["city"] in ("Paris", "Rome", "Oslo")
  chunks = list(oa.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER],
                                           tool_choice="required", max_tokens=100, temperature=0,
                                           stream=True))
  deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
  assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == args
  s = gm.models.generate_content(model="tiny", contents="a person", config=types.GenerateContentConfig(
      max_output_tokens=80, temperature=0.7, seed=3, response_mime_type="application/json",
      response_json_schema=PERSON))
  check_person(json.loads(s.text))


@pytest.mark.parametrize("budget", [0, 16, -1])
def test_thinking_budgets(oa, gm, budget):
  r = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "think"}],
                                 max_tokens=6, temperature=0, extra_body={"thinking_budget": budget})
  thought = r.usage.completion_tokens_details.reasoning_tokens
  cap = 256 if budget < 0 else budget
  assert thought <= cap and (thought == 0) == (budget == 0)
  g = gm.models.generate_content(model="tiny", contents="think", config=types.GenerateContentConfig(
      max_output_tokens=6, temperature=0, thinking_config=types.ThinkingConfig(
          thinking_budget=budget, include_thoughts=True)))
  n = g.usage_metadata.thoughts_token_count or 0
  assert n <= cap and (n == 0) == (budget == 0)


def test_multi_turn_chat_hits_prefix_cache(oa, gm):
  msgs = [{"role": "system", "content": "You are a helpful assistant. " * 8},
          {"role": "user", "content": "Tell me about Paris."}]
  r1 = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
  msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
           {"role": "user", "content": "And about Rome?"}]
  r2 = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
  assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 4
  g = gm.models.generate_content(model="tiny", contents="Hello there",
                                 config=types.GenerateContentConfig(max_output_tokens=8,
                                                                    temperature=0))
  streamed = "".join(c.text or "" for c in gm.models.generate_content_stream(
      model="tiny", contents="Hello there", config=types.GenerateContentConfig(
          max_output_tokens=8, temperature=0)))
  assert streamed == g.text


def test_media_is_refused_naming_the_part(oa):
  """The runtime has no vision/audio towers: an image part is a 400 that names it."""
  with pytest.raises(openai.BadRequestError) as e:
    oa.chat.completions.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
  assert "messages[0].content[1]" in str(e.value)
