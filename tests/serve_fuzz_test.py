"""Hundreds of malformed requests: every answer is a 4xx JSON error naming the problem, and the
server still answers /healthz and a good request afterwards."""

import base64
import io
import json
import random
import wave

import httpx2
import numpy as np
import PIL.Image
import pytest

from gemini.serve import app as app_lib
from gemini.serve import testing

GOOD_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
             "temperature": 0}
GOOD_GEM = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 4}}


def _bodies(rng):
  """(path, raw body bytes, a word the error must contain)."""
  chat, gem = "/v1/chat/completions", "/v1beta/models/tiny:generateContent"
  out = [
      (chat, b"{not json", "json"), (chat, b"", "body"), (chat, b"[]", "body"),
      (chat, b"\xff\xfe\x00", "json"), (gem, b"{", "json"), (gem, b"null", "body"),
      ("/v1/completions", b'{"model": "tiny"}', "prompt"),
      ("/v1/completions", json.dumps({"model": "tiny", "prompt": [10 ** 9]}).encode(), "prompt"),
      ("/v1/completions", json.dumps({"model": "tiny", "prompt": ""}).encode(), "prompt"),
  ]
  chat_mut = [
      ({"model": 5}, "model"), ({"model": "nope"}, "model"), ({"messages": []}, "messages"),
      ({"messages": "hi"}, "messages"), ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
      ({"messages": [{"role": "user", "content": 7}]}, "content"),
      ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": 10 ** 12}, "max_tokens"),
      ({"max_tokens": 100000}, "max_tokens"), ({"max_tokens": "many"}, "max_tokens"),
      ({"temperature": 9}, "temperature"), ({"temperature": "hot"}, "temperature"),
      ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n"), ({"n": 1000}, "n"),
      ({"seed": 10 ** 30}, "seed"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
      ({"stop": [""]}, "stop"), ({"stop": 5}, "stop"), ({"tools": "x"}, "tools"),
      ({"tools": [{"type": "function"}]}, "tools"),
      ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "name"),
      ({"tool_choice": "required"}, "tool_choice"), ({"tool_choice": 3}, "tool_choice"),
      ({"response_format": {"type": "yaml"}}, "response_format"),
      ({"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}, "response_format"),
      ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema":
                                                                    {"type": "wat"}}}}, "response_format"),
      ({"messages": [{"role": "user", "content": "x " * 5000}]}, "cache positions"),
      ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
          "url": "data:image/png;base64,AAAA"}}]}]}, "content"),
      ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "content"),
      ({"thinking_budget": -5}, "thinking_budget"), ({"reasoning_effort": "max"}, "reasoning_effort"),
      ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f",
                                                                        "arguments": "{bad"}}]}]},
       "arguments"),
  ]
  for m, word in chat_mut:
    out.append((chat, json.dumps({**GOOD_CHAT, **m}).encode(), word))
  png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(40))).decode()
  gem_mut = [
      ({"contents": []}, "contents"), ({"contents": "hi"}, "contents"),
      ({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}, "role"),
      ({"contents": [{"role": "user", "parts": [{}]}]}, "parts"),
      ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                "data": "!!notbase64"}}]}]}, "base64"),
      ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                "data": png}}]}]}, "inlineData"),
      ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "audio/wav",
                                                                "data": "UklGRg=="}}]}]}, "inlineData"),
      ({"contents": [{"role": "model", "parts": [{"text": "only model"}]}]}, "user"),
      ({"generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
      ({"generationConfig": {"temperature": -1}}, "temperature"),
      ({"generationConfig": {"topK": "k"}}, "topK"),
      ({"generationConfig": {"candidateCount": 99}}, "candidateCount"),
      ({"generationConfig": {"responseMimeType": "text/csv"}}, "responseMimeType"),
      ({"generationConfig": {"responseSchema": {"type": "BANANA"}}}, "responseSchema"),
      ({"generationConfig": {"responseSchema": {"type": 5}}}, "responseSchema"),
      ({"generationConfig": {"responseSchema": {"type": "OBJECT", "properties": []}}}, "properties"),
      ({"generationConfig": {"thinkingConfig": {"thinkingBudget": -7}}}, "thinkingBudget"),
      ({"generationConfig": {"stopSequences": [""]}}, "stopSequences"),
      ({"tools": [{"functionDeclarations": "x"}]}, "functionDeclarations"),
      ({"tools": [{"functionDeclarations": [{"name": "a b"}]}]}, "name"),
      ({"toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}, "mode"),
      ({"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}, "functionDeclarations"),
      ({"safetySettings": [{"category": "HARM_CATEGORY_BOREDOM", "threshold": "BLOCK_NONE"}]},
       "category"),
      ({"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "MAYBE"}]},
       "threshold"),
  ]
  for m, word in gem_mut:
    out.append((gem, json.dumps({**GOOD_GEM, **m}).encode(), word))
  out.append(("/v1beta/models/other:generateContent", json.dumps(GOOD_GEM).encode(), "other"))
  # Random structural damage to good bodies: every one must still get a 4xx (or a 200 if the
  # damage happened to leave a valid request).
  for _ in range(300):
    path, base = rng.choice([(chat, GOOD_CHAT), (gem, GOOD_GEM)])
    raw = bytearray(json.dumps(base).encode())
    for _ in range(rng.randrange(1, 4)):
      op = rng.randrange(3)
      i = rng.randrange(len(raw))
      if op == 0:
        del raw[i]
      elif op == 1:
        raw.insert(i, rng.choice(b'{}[]",:0-9e'))
      else:
        raw[i] = rng.randrange(256)
    out.append((path, bytes(raw), None))
  return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  be, srv = testing.serve_tiny(str(tmp_path_factory.mktemp("tok")), n_slots=2, max_len=256,
                               server_cfg=app_lib.ServerConfig(model_id="tiny", max_tokens=512,
                                                               max_body_bytes=1 << 20))
  yield srv
  srv.stop()
  be.stop()


def test_malformed_requests_get_named_4xx(server):
  rng = random.Random(0)
  bodies = _bodies(rng)
  assert len(bodies) > 350
  statuses = {}
  with httpx2.Client(base_url=server.url, timeout=60) as c:
    for path, raw, word in bodies:
      r = c.post(path, content=raw, headers={"content-type": "application/json"})
      statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
      if word is None and r.status_code == 200:
        continue
      assert 400 <= r.status_code < 500, (path, raw[:200], r.status_code, r.text[:300])
      assert "error" in r.json(), (path, raw[:200], r.text[:300])
      err = r.json()["error"]
      assert err["message"], (raw[:200], r.text)
      if word is not None:
        assert word.lower() in (err["message"] + str(err.get("param"))).lower(), (
            word, raw[:200], err)
    big = c.post("/v1/chat/completions", content=b"{" + b" " * (2 << 20) + b"}",
                 headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert c.get("/healthz").json()["status"] == "ok"
    ok = c.post("/v1/chat/completions", json=GOOD_CHAT)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
  print("statuses:", statuses)
  assert 500 not in statuses


# -- media on a model with vision and audio encoders ----------------------------------------

def _png_bytes(seed=0, size=16) -> bytes:
  img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
  buf = io.BytesIO()
  PIL.Image.fromarray(img).save(buf, "PNG")
  return buf.getvalue()


def _flat_png(size: int) -> bytes:
  """A one-colour PNG: tiny on the wire, size x size pixels decoded."""
  buf = io.BytesIO()
  PIL.Image.new("RGB", (size, size), (1, 2, 3)).save(buf, "PNG")
  return buf.getvalue()


def _wav_bytes(seconds=0.2, rate=8000) -> bytes:
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(np.zeros(int(seconds * rate), "<i2").tobytes())
  return buf.getvalue()


def _gif_bytes(frames: int, ms: int) -> bytes:
  ims = [PIL.Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(frames)]
  buf = io.BytesIO()
  ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=ms, loop=0)
  return buf.getvalue()


def _b64(raw: bytes) -> str:
  return base64.b64encode(raw).decode()


def _oa(parts, role="user"):
  return json.dumps({**GOOD_CHAT, "messages": [{"role": role, "content": [
      {"type": "text", "text": "look"}] + parts}]}).encode()


def _gm(parts, role="user"):
  return json.dumps({**GOOD_GEM, "contents": [{"role": role, "parts": [{"text": "look"}] + parts}]
                     }).encode()


def _media_bodies(rng):
  """(path, body, the field the error must name, a word the message must contain)."""
  chat, gem = "/v1/chat/completions", "/v1beta/models/tiny:generateContent"
  img, aud, vid = ("messages[0].content[1].image_url", "messages[0].content[1].input_audio",
                   "messages[0].content[1].video_url")
  inline = "contents[0].parts[1].inlineData"
  png, wav_ = _png_bytes(), _wav_bytes()
  url = lambda mime, raw: {"url": f"data:{mime};base64,{_b64(raw)}"}
  out = [
      (chat, _oa([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]), img,
       "base64"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", png[:60])}]), img, "image"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", b"\x89PNG\r\n\x1a\n" +
                                                         bytes(range(80)))}]), img, "image"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", wav_)}]), img, "image"),
      (chat, _oa([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]),
       img, "data: URL"),
      (chat, _oa([{"type": "image_url", "image_url": url("audio/wav", wav_)}]), img, "not an image"),
      (chat, _oa([{"type": "image_url", "image_url": url("text/plain", b"hello")}]), img,
       "not supported"),
      (chat, _oa([{"type": "image_url", "image_url": {}}]), img, "url"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", _flat_png(5000))}]),
       img, "pixels"),
      (chat, _oa([{"type": "input_audio", "input_audio": {"data": _b64(wav_), "format": "mp3"}}]),
       aud, "wav"),
      (chat, _oa([{"type": "input_audio", "input_audio": {"data": _b64(png), "format": "wav"}}]),
       aud, "WAV"),
      (chat, _oa([{"type": "input_audio", "input_audio": {"data": _b64(wav_[:30]),
                                                          "format": "wav"}}]), aud, "WAV"),
      (chat, _oa([{"type": "input_audio", "input_audio": {"data": _b64(_wav_bytes(31, 1000)),
                                                          "format": "wav"}}]), aud, "max"),
      (chat, _oa([{"type": "input_audio", "input_audio": {"data": _b64(_wav_bytes(0.001)),
                                                          "format": "wav"}}]), aud, "shorter"),
      (chat, _oa([{"type": "input_audio", "input_audio": "abc"}]), aud, "object"),
      (chat, _oa([{"type": "video_url", "video_url": url("video/mp4", b"\x00\x00\x00\x18ftyp")}]),
       vid, "GIF"),
      (chat, _oa([{"type": "video_url", "video_url": url("video/gif", _gif_bytes(20, 1000))}]),
       vid, "frames"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", png)}], role="system"),
       img, "user"),
      (chat, _oa([{"type": "image_url", "image_url": url("image/png", png)}] * 9),
       "messages[0].content[9].image_url", "more than 8"),
      (gem, _gm([{"inlineData": {"mimeType": "image/png", "data": "%%%"}}]), inline, "base64"),
      (gem, _gm([{"inlineData": {"mimeType": "image/png", "data": _b64(png[:50])}}]), inline,
       "image"),
      (gem, _gm([{"inlineData": {"mimeType": "image/jpeg", "data": _b64(b"\xff\xd8\xff" +
                                                                        bytes(100))}}]),
       inline, "image"),
      (gem, _gm([{"inlineData": {"mimeType": "audio/wav", "data": _b64(png)}}]), inline, "WAV"),
      (gem, _gm([{"inlineData": {"mimeType": "application/pdf", "data": _b64(b"%PDF")}}]), inline,
       "not supported"),
      (gem, _gm([{"inlineData": {"mimeType": "video/mp4", "data": _b64(b"\x00\x00\x00\x18ftyp")}}]),
       inline, "GIF"),
      (gem, _gm([{"inlineData": {"mimeType": "video/gif", "data": _b64(_gif_bytes(20, 1000))}}]),
       inline, "frames"),
      (gem, _gm([{"inlineData": {"mimeType": 7, "data": _b64(png)}}]), inline, "mimeType"),
      (gem, _gm([{"inlineData": {"mimeType": "image/png"}}]), inline, "base64"),
      (gem, _gm([{"inlineData": {"mimeType": "image/png", "data": _b64(png)}}], role="model") +
       b"", inline, "user"),
  ]
  # Random damage to valid media bytes: each answer is a 200 (still decodable) or a 400 that
  # names the part; never a 500.
  good = {"image/png": png, "audio/wav": wav_, "video/gif": _gif_bytes(3, 500)}
  for _ in range(60):
    mime = rng.choice(sorted(good))
    raw = bytearray(good[mime])
    if rng.random() < 0.3:
      raw = raw[:rng.randrange(len(raw))]
    for _ in range(rng.randrange(1, 6)):
      if raw:
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    out.append((gem, _gm([{"inlineData": {"mimeType": mime, "data": _b64(bytes(raw))}}]), inline,
                None))
  return out


@pytest.fixture(scope="module")
def mm_server(tmp_path_factory):
  be, srv = testing.serve_tiny_mm(str(tmp_path_factory.mktemp("tokmm")), n_slots=1, max_len=128,
                                  server_cfg=app_lib.ServerConfig(model_id="tiny", max_tokens=64))
  yield srv
  srv.stop()
  be.stop()


def test_bad_media_gets_a_400_naming_the_part(mm_server):
  statuses = {}
  with httpx2.Client(base_url=mm_server.url, timeout=120) as c:
    for path, raw, field, word in _media_bodies(random.Random(1)):
      r = c.post(path, content=raw, headers={"content-type": "application/json"})
      statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
      if word is None and r.status_code == 200:
        continue
      assert r.status_code == 400, (field, word, r.status_code, r.text[:300])
      err = r.json()["error"]
      if path.startswith("/v1/chat"):
        assert err["param"] == field, (field, err)
      assert field in err["message"], (field, err)
      if word is not None:
        assert word.lower() in err["message"].lower(), (word, err)
    assert c.get("/healthz").json()["status"] == "ok"
    ok = c.post("/v1/chat/completions", content=_oa([{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + _b64(_png_bytes())}}]),
        headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text
  print("media statuses:", statuses)
  assert 500 not in statuses
