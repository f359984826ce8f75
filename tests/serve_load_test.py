"""Bounded loopback load: N concurrent streaming clients (more than the server's slots, so
requests queue, join and leave), each stream checked against the same request served alone:
nothing lost, mixed up or truncated. Prints p50/p99 time-to-first-token and inter-token
latency."""

import concurrent.futures
import time

import numpy as np
import openai
import pytest

from gemini.serve import testing

N_CLIENTS = 12
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  be, srv = testing.serve_tiny(str(tmp_path_factory.mktemp("tok")), n_slots=4, max_len=256)
  yield be, srv
  srv.stop()
  be.stop()


def _request(i):
  return dict(model="tiny", messages=[{"role": "user", "content": f"Client {i} asks: tell me "
                                       f"{'more ' * (i % 5)}about number {i * 7}."}],
              max_tokens=MAX_TOKENS, temperature=0.9, top_p=0.95, seed=1000 + i)


def test_concurrent_streams_match_solo_requests(server):
  be, srv = server
  oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)

  def stream(i):
    t0 = time.monotonic()
    times, parts, finish, usage = [], [], None, None
    for c in oa.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                        **_request(i)):
      if c.usage is not None:
        usage = c.usage
      if c.choices:
        if c.choices[0].delta.content:
          times.append(time.monotonic() - t0)
          parts.append(c.choices[0].delta.content)
        finish = c.choices[0].finish_reason or finish
    return "".join(parts), times, finish, usage

  stream(N_CLIENTS)                  # one request first: client and route set-up off the clock
  with concurrent.futures.ThreadPoolExecutor(N_CLIENTS) as pool:
    results = list(pool.map(stream, range(N_CLIENTS)))
  solo = [oa.chat.completions.create(**_request(i)) for i in range(N_CLIENTS)]
  for i, ((text, times, finish, usage), ref) in enumerate(zip(results, solo)):
    assert text == ref.choices[0].message.content, i
    assert finish == ref.choices[0].finish_reason, i
    assert usage.completion_tokens == ref.usage.completion_tokens, i
  assert len({r[0] for r in results}) == N_CLIENTS          # every client got its own text
  ttft = np.array([r[1][0] for r in results if r[1]])
  itl = np.concatenate([np.diff(r[1]) for r in results if len(r[1]) > 1])
  print(f"{N_CLIENTS} streams on {be.engine.ecfg.n_slots} slots: TTFT p50 {np.percentile(ttft, 50)*1e3:.0f} ms "
        f"p99 {np.percentile(ttft, 99)*1e3:.0f} ms; ITL p50 {np.percentile(itl, 50)*1e3:.1f} ms "
        f"p99 {np.percentile(itl, 99)*1e3:.1f} ms")
