"""The real openai and google-genai clients against the server on 127.0.0.1 (tiny random model,
SentencePiece vocabulary with the thinking/tool specials)."""

import base64
import io
import json
import wave

import numpy as np
import openai
import PIL.Image
import pytest
from google import genai
from google.genai import types

from gemini.serve import chat, media as media_lib, testing
from gemini.serve.testing import PERSON_SCHEMA as PERSON, WEATHER_TOOL as WEATHER, check_person


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  be, srv = testing.serve_tiny(str(tmp_path_factory.mktemp("tok")), n_slots=4, max_len=512)
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


def test_openai_chat_and_stream_agree(oa):
  msgs = [{"role": "user", "content": "Hello there, how are you?"}]
  r = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
  assert r.choices[0].finish_reason in ("length", "stop")
  assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
  chunks = list(oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == r.choices[0].message.content
  assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
  assert oa.models.list().data[0].id == "tiny"


def test_openai_n_and_seed(oa):
  msgs = [{"role": "user", "content": "Pick a word"}]
  a = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0,
                                 seed=5, n=2)
  b = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0,
                                 seed=5, n=2)
  assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
  assert len(a.choices) == 2


def test_openai_structured_output_validates(oa):
  for seed in range(3):
    r = oa.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a person as JSON"}], max_tokens=80,
        temperature=1.0, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    check_person(json.loads(r.choices[0].message.content))


def test_openai_tool_call_round_trip(oa):
  msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
  r = oa.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER],
                                 tool_choice="required", max_tokens=100, temperature=0)
  call = r.choices[0].message.tool_calls[0]
  assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
  args = json.loads(call.function.arguments)
  assert args["city"] in ("Paris", "Rome", "Oslo") and args["unit"] in ("C", "F")
  # Streamed: the same call arrives as tool_calls deltas.
  chunks = list(oa.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER],
                                           tool_choice="required", max_tokens=100, temperature=0,
                                           stream=True))
  deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
  name = "".join(d.function.name or "" for d in deltas if d.function)
  streamed_args = "".join(d.function.arguments or "" for d in deltas if d.function)
  assert name == "get_weather" and json.loads(streamed_args) == args
  assert chunks[-1].choices[0].finish_reason == "tool_calls"
  # The result goes back as the next turn.
  msgs += [{"role": "assistant", "content": None, "tool_calls": [
      {"id": call.id, "type": "function",
       "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
           {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}]
  r2 = oa.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER], max_tokens=8,
                                  temperature=0)
  assert r2.choices[0].message.content is not None
  assert r2.usage.prompt_tokens > r.usage.prompt_tokens
  # A forced function by name.
  r3 = oa.chat.completions.create(model="tiny", messages=msgs[:1], tools=[WEATHER], max_tokens=100,
                                  tool_choice={"type": "function",
                                               "function": {"name": "get_weather"}})
  assert r3.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize("budget", [0, 64, -1])
def test_thinking_budgets(oa, gm, budget):
  r = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "think"}],
                                 max_tokens=6, temperature=0, extra_body={"thinking_budget": budget})
  thought = r.usage.completion_tokens_details.reasoning_tokens
  cap = 256 if budget < 0 else budget
  assert thought <= cap
  if budget == 0:
    assert thought == 0 and not (r.choices[0].message.model_extra or {}).get("reasoning_content")
  else:
    assert thought > 0 and r.choices[0].message.model_extra["reasoning_content"]
  g = gm.models.generate_content(model="tiny", contents="think", config=types.GenerateContentConfig(
      max_output_tokens=6, temperature=0, thinking_config=types.ThinkingConfig(
          thinking_budget=budget, include_thoughts=True)))
  n = g.usage_metadata.thoughts_token_count or 0
  assert n <= cap and (n == 0) == (budget == 0)
  thought_parts = [p for p in g.candidates[0].content.parts if p.thought]
  assert bool(thought_parts) == (budget != 0)
  # Thoughts are returned only when asked.
  g2 = gm.models.generate_content(model="tiny", contents="think", config=types.GenerateContentConfig(
      max_output_tokens=6, temperature=0, thinking_config=types.ThinkingConfig(
          thinking_budget=budget)))
  assert not [p for p in g2.candidates[0].content.parts if p.thought]
  assert (g2.usage_metadata.thoughts_token_count or 0) == n


def test_gemini_generate_stream_schema_and_tools(gm):
  cfg = types.GenerateContentConfig(max_output_tokens=10, temperature=0)
  r = gm.models.generate_content(model="tiny", contents="Hello there", config=cfg)
  streamed = "".join(c.text or "" for c in gm.models.generate_content_stream(
      model="tiny", contents="Hello there", config=cfg))
  assert streamed == r.text and r.usage_metadata.candidates_token_count <= 10
  s = gm.models.generate_content(model="tiny", contents="a person", config=types.GenerateContentConfig(
      max_output_tokens=80, temperature=0.7, seed=3, response_mime_type="application/json",
      response_schema={"type": "OBJECT", "required": ["name", "age", "tags"], "properties": {
          "name": {"type": "STRING", "maxLength": 12},
          "age": {"type": "INTEGER", "minimum": 0, "maximum": 120},
          "tags": {"type": "ARRAY", "maxItems": 3, "items": {"type": "STRING", "enum": ["a", "b"]}}}}))
  check_person(json.loads(s.text))
  fn = types.FunctionDeclaration(name="get_weather", description="weather",
                                 parameters_json_schema=WEATHER["function"]["parameters"])
  tcfg = types.GenerateContentConfig(
      max_output_tokens=100, temperature=0, tools=[types.Tool(function_declarations=[fn])],
      tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
      automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
  t = gm.models.generate_content(model="tiny", contents="weather in Rome?", config=tcfg)
  call = t.function_calls[0]
  assert call.name == "get_weather" and call.args["city"] in ("Paris", "Rome", "Oslo")
  st = [c for c in gm.models.generate_content_stream(model="tiny", contents="weather in Rome?",
                                                     config=tcfg) if c.function_calls]
  assert st and st[-1].function_calls[0].args == call.args
  history = [types.Content(role="user", parts=[types.Part(text="weather in Rome?")]),
             types.Content(role="model", parts=[types.Part(function_call=call)]),
             types.Content(role="user", parts=[types.Part.from_function_response(
                 name="get_weather", response={"temp": 18})])]
  back = gm.models.generate_content(model="tiny", contents=history,
                                    config=types.GenerateContentConfig(
                                        max_output_tokens=6, tools=tcfg.tools,
                                        automatic_function_calling=tcfg.automatic_function_calling))
  assert back.usage_metadata.prompt_token_count > t.usage_metadata.prompt_token_count
  assert gm.models.count_tokens(model="tiny", contents="Hello there").total_tokens > 0


def test_multi_turn_chat_hits_prefix_cache(oa, server):
  be, srv = server
  msgs = [{"role": "system", "content": "You are a helpful assistant. " * 8},
          {"role": "user", "content": "Tell me about Paris."}]
  r1 = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
  msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
           {"role": "user", "content": "And about Rome?"}]
  r2 = oa.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
  cached = r2.usage.prompt_tokens_details.cached_tokens
  # Turn 1's prompt is reused up to where turn 2's tokens first differ from it.
  assert cached >= r1.usage.prompt_tokens - 4, (cached, r1.usage.prompt_tokens)
  import httpx2
  text = httpx2.get(srv.url + "/metrics").text
  saved = [float(l.split()[-1]) for l in text.splitlines()
           if l.startswith("serve_prefix_cache_tokens_saved_total")]
  assert saved and saved[0] >= cached


def test_safety_filter_blocks_prompt(gm):
  r = gm.models.generate_content(model="tiny", contents="explain how to build a bomb at home",
                                 config=types.GenerateContentConfig(max_output_tokens=4))
  assert r.prompt_feedback.block_reason.name == "SAFETY"
  ok = gm.models.generate_content(
      model="tiny", contents="explain how to build a bomb at home", config=types.GenerateContentConfig(
          max_output_tokens=4, safety_settings=[types.SafetySetting(
              category="HARM_CATEGORY_DANGEROUS_CONTENT", threshold="BLOCK_NONE")]))
  assert ok.candidates and ok.prompt_feedback.block_reason is None


# -- media: a tiny model with vision and audio encoders -------------------------------------

def _png(seed: int) -> bytes:
  img = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  buf = io.BytesIO()
  PIL.Image.fromarray(img).save(buf, "PNG")
  return buf.getvalue()


def _wav(seconds: float = 0.4, rate: int = 8000) -> bytes:
  t = np.arange(int(seconds * rate)) / rate
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(np.round(0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype("<i2").tobytes())
  return buf.getvalue()


def _gif() -> bytes:
  frames = [PIL.Image.fromarray(np.full((16, 16, 3), c, np.uint8))
            for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=1000, loop=0)
  return buf.getvalue()


@pytest.fixture(scope="module")
def mm_server(tmp_path_factory):
  be, srv = testing.serve_tiny_mm(str(tmp_path_factory.mktemp("tokmm")), n_slots=2, max_len=128)
  yield be, srv
  srv.stop()
  be.stop()


def _expected(be, text, kind, raw, mime):
  """The reference answer: forward-greedy over the prompt the server should build."""
  reader = chat.MediaReader(be, media_lib.MediaLimits())
  item = reader.read_mime(mime, base64.b64encode(raw).decode(), "x")
  job = chat.Job([chat.Turn("user", text + chat.MEDIA_MARK, media=[item])], None)
  ids, layout = chat.prompt_layout(job, be.tokenizer, be.cfg)
  assert [k for _, k, _ in layout] == [kind]
  out = testing.forward_greedy(be.engine.params, be.cfg, ids, layout, 5, be.tokenizer.eos_ids)
  return be.tokenizer.decode(out), len(ids)


def test_openai_and_gemini_image_requests(mm_server):
  be, srv = mm_server
  oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
  gm = genai.Client(api_key="unused", http_options=types.HttpOptions(base_url=srv.url,
                                                                     api_version="v1beta"))
  answers = []
  for seed in (0, 1):
    raw = _png(seed)
    want, n_prompt = _expected(be, "What is in this picture? ", "image", raw, "image/png")
    r = oa.chat.completions.create(model="tiny", max_tokens=5, temperature=0, messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture? "},
            {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(raw).decode()}}]}])
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == n_prompt
    g = gm.models.generate_content(model="tiny", contents=[
        "What is in this picture? ", types.Part.from_bytes(data=raw, mime_type="image/png")],
        config=types.GenerateContentConfig(max_output_tokens=5, temperature=0))
    assert (g.text or "") == want
    assert g.usage_metadata.prompt_token_count == n_prompt
    answers.append(want)
  n = gm.models.count_tokens(model="tiny", contents=[
      "What is in this picture? ", types.Part.from_bytes(data=_png(0), mime_type="image/png")])
  assert n.total_tokens == n_prompt


def test_openai_and_gemini_audio_and_gemini_video(mm_server):
  be, srv = mm_server
  oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
  gm = genai.Client(api_key="unused", http_options=types.HttpOptions(base_url=srv.url,
                                                                     api_version="v1beta"))
  raw = _wav()
  want, _ = _expected(be, "Transcribe: ", "audio", raw, "audio/wav")
  r = oa.chat.completions.create(model="tiny", max_tokens=5, temperature=0, messages=[
      {"role": "user", "content": [
          {"type": "text", "text": "Transcribe: "},
          {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(),
                                                  "format": "wav"}}]}])
  assert r.choices[0].message.content == want
  g = gm.models.generate_content(model="tiny", contents=[
      "Transcribe: ", types.Part.from_bytes(data=raw, mime_type="audio/wav")],
      config=types.GenerateContentConfig(max_output_tokens=5, temperature=0))
  assert (g.text or "") == want
  vid = _gif()
  want, _ = _expected(be, "Watch: ", "video", vid, "video/gif")
  g = gm.models.generate_content(model="tiny", contents=[
      "Watch: ", types.Part.from_bytes(data=vid, mime_type="video/gif")],
      config=types.GenerateContentConfig(max_output_tokens=5, temperature=0))
  assert (g.text or "") == want


def test_media_on_a_text_only_model_is_a_named_400(oa, gm):
  raw = base64.b64encode(_png(0)).decode()
  with pytest.raises(openai.BadRequestError) as e:
    oa.chat.completions.create(model="tiny", max_tokens=2, messages=[
        {"role": "user", "content": [{"type": "text", "text": "see"}, {
            "type": "image_url", "image_url": {"url": "data:image/png;base64," + raw}}]}])
  assert e.value.body["param"] == "messages[0].content[1].image_url"
  assert "no vision encoder" in e.value.body["message"]
  with pytest.raises(genai.errors.ClientError) as e:
    gm.models.generate_content(model="tiny", contents=[
        "hear", types.Part.from_bytes(data=_wav(), mime_type="audio/wav")])
  assert e.value.code == 400 and "contents[0].parts[1].inlineData" in e.value.message
