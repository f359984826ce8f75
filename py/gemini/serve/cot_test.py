"""Uncertainty-routed CoT through the OpenAI route: the vote recomputed from independent
samples of the same requests decides the route."""

import collections

import httpx2
import pytest

from gemini.serve import cot, testing


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  be, srv = testing.serve_tiny(str(tmp_path_factory.mktemp("tok")), n_slots=4, max_len=256)
  yield srv
  srv.stop()
  be.stop()


@pytest.mark.parametrize("threshold", [0.01, 1.0])
def test_vote_and_route(server, threshold):
  body = {"model": "tiny", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3,
          "temperature": 0, "seed": 11, "cot_samples": 4, "cot_threshold": threshold}
  r = httpx2.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
  vote = r["cot_vote"]
  # The same chains requested directly (n=4 at the CoT temperature, seeds 11..14) and greedy.
  chains = httpx2.post(server.url + "/v1/chat/completions", timeout=120, json={
      **body, "cot_samples": None, "temperature": 0.7, "n": 4}).json()
  greedy = httpx2.post(server.url + "/v1/chat/completions", timeout=120, json={
      **body, "cot_samples": None}).json()
  keys = [cot.answer_key(c["message"]["content"]) for c in chains["choices"]]
  counts = collections.Counter(keys)
  assert vote["votes"] == dict(counts)
  top, n = counts.most_common(1)[0]
  assert vote["majority_share"] == n / 4
  text = r["choices"][0]["message"]["content"]
  if n / 4 >= threshold:
    assert vote["route"] == "majority" and cot.answer_key(text) == top
  else:
    assert vote["route"] == "greedy" and text == greedy["choices"][0]["message"]["content"]
