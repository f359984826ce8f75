"""OpenAI-shaped routes: /v1/chat/completions (+SSE), /v1/completions, /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

import fastapi
import pydantic
from sse_starlette.sse import EventSourceResponse

from gemini.serve import chat, cot, media as media_lib
from gemini.serve import request as request_lib

_Cfg = pydantic.ConfigDict(extra="allow")


class Message(pydantic.BaseModel):
  model_config = _Cfg
  role: Literal["system", "developer", "user", "assistant", "tool"]
  content: Optional[Union[str, List[Dict[str, Any]]]] = None
  tool_calls: Optional[List[Dict[str, Any]]] = None
  tool_call_id: Optional[str] = None
  name: Optional[str] = None


class StreamOptions(pydantic.BaseModel):
  model_config = _Cfg
  include_usage: bool = False


class Sampling(pydantic.BaseModel):
  model_config = _Cfg
  model: str
  max_tokens: Optional[int] = pydantic.Field(None, ge=1, le=1_000_000)
  max_completion_tokens: Optional[int] = pydantic.Field(None, ge=1, le=1_000_000)
  temperature: float = pydantic.Field(1.0, ge=0.0, le=2.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  top_k: int = pydantic.Field(0, ge=0, le=1_000_000)
  n: int = pydantic.Field(1, ge=1, le=8)
  stop: Optional[Union[str, List[str]]] = None
  seed: Optional[int] = pydantic.Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)
  stream: bool = False
  stream_options: Optional[StreamOptions] = None


class ChatRequest(Sampling):
  messages: List[Message] = pydantic.Field(min_length=1)
  tools: Optional[List[Dict[str, Any]]] = None
  tool_choice: Optional[Union[Literal["none", "auto", "required"], Dict[str, Any]]] = None
  response_format: Optional[Dict[str, Any]] = None
  reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
  thinking_budget: Optional[int] = pydantic.Field(None, ge=-1, le=100_000)
  cot_samples: Optional[int] = pydantic.Field(None, ge=1, le=16)     # uncertainty-routed CoT
  cot_threshold: float = pydantic.Field(0.5, gt=0.0, le=1.0)


class CompletionRequest(Sampling):
  prompt: Union[str, List[int]]


_EFFORT = {"none": 0, "minimal": 0, "low": 64, "medium": 256, "high": -1}


def _stop(stop) -> tuple:
  stops = [stop] if isinstance(stop, str) else list(stop or [])
  if len(stops) > 4 or any(not s for s in stops):
    raise chat.BadRequest("stop: at most 4 non-empty strings", "stop")
  return tuple(stops)


def _params(r: Sampling, ctx, thinking: int = 0) -> request_lib.GenParams:
  max_tokens = r.max_completion_tokens or r.max_tokens or ctx.default_max_tokens
  if max_tokens > ctx.max_tokens:
    raise chat.BadRequest(f"max_tokens={max_tokens} exceeds this server's limit {ctx.max_tokens}",
                          "max_tokens")
  return request_lib.GenParams(max_tokens=max_tokens, temperature=r.temperature, top_k=r.top_k,
                               top_p=r.top_p, seed=(r.seed or 0) % (1 << 63), stop=_stop(r.stop),
                               thinking_budget=thinking, timeout_s=ctx.timeout_s)


def _text_of(content, field: str, reader: Optional[chat.MediaReader] = None,
             role: str = "user"):
  """A message's content -> its text (MEDIA_MARK where a media part was) and media list;
  media parts only with a reader (chat messages) and in user messages."""
  if content is None or isinstance(content, str):
    return chat.clean_text(content or ""), []
  parts, media = [], []
  for i, p in enumerate(content):
    kind = p.get("type") if isinstance(p, dict) else None
    where = f"{field}[{i}]"
    if kind == "text":
      if not isinstance(p.get("text"), str):
        raise chat.BadRequest(f"{where}.text must be a string", where)
      parts.append(chat.clean_text(p["text"]))
    elif kind in _MEDIA_PARTS:
      where = f"{where}.{kind}"
      if reader is None or role != "user":
        raise chat.BadRequest(f"{where}: media parts are accepted in user messages only", where)
      media.append(_media_part(p.get(kind), kind, where, reader))
      parts.append(chat.MEDIA_MARK)
    else:
      raise chat.BadRequest(f"{where}.type {kind!r} is not text/image_url/input_audio/video_url",
                            where)
  return "".join(parts), media


_MEDIA_PARTS = ("image_url", "input_audio", "video_url")


def _media_part(body, kind: str, where: str, reader: chat.MediaReader):
  """image_url / video_url {url: data:...} (or the bare URL string); input_audio {data, format}."""
  if kind == "input_audio":
    if not isinstance(body, dict):
      raise chat.BadRequest(f"{where} must be an object {{data, format}}", where)
    fmt = body.get("format")
    if fmt != "wav":
      raise chat.BadRequest(f"{where}.format {fmt!r} is not supported (only 'wav')", where)
    return reader.read_mime("audio/wav", body.get("data"), where)
  url = body.get("url") if isinstance(body, dict) else body
  try:
    mime, raw = media_lib.parse_data_url(url)
    got = media_lib.kind_of_mime(mime)
  except media_lib.MediaError as e:
    raise chat.BadRequest(f"{where}: {e}", where) from e
  want = "image" if kind == "image_url" else "video"
  if got != want and not (want == "video" and mime.lower() in ("image/gif", "image/webp",
                                                                 "image/png", "image/apng")):
    raise chat.BadRequest(f"{where}: mime type {mime!r} is not an {want}", where)
  return reader.read(want, raw, where)


def _tools(r: ChatRequest):
  tools, mode = [], "auto"
  for i, t in enumerate(r.tools or []):
    f = t.get("function") if isinstance(t, dict) else None
    if t.get("type") != "function" or not isinstance(f, dict):
      raise chat.BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}",
                            f"tools[{i}]")
    tools.append(chat.tool_decl(f.get("name"), f.get("description"), f.get("parameters"),
                                f"tools[{i}].function"))
  tc = r.tool_choice
  if isinstance(tc, dict):
    name = (tc.get("function") or {}).get("name")
    if tc.get("type") != "function" or not isinstance(name, str):
      raise chat.BadRequest("tool_choice must name a function: {'type':'function','function':"
                            "{'name':...}}", "tool_choice")
    mode = name
  elif tc is not None:
    mode = tc
  if mode not in ("auto", "none") and not tools:
    raise chat.BadRequest(f"tool_choice={mode!r} but no tools are declared", "tool_choice")
  return tools, mode


def _schema(rf) -> Optional[dict]:
  if rf is None:
    return None
  kind = rf.get("type")
  if kind == "text":
    return None
  if kind == "json_object":
    return {"type": "object"}
  if kind == "json_schema":
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
      raise chat.BadRequest("response_format.json_schema.schema must be a JSON schema object",
                            "response_format")
    return js["schema"]
  raise chat.BadRequest(f"response_format.type {kind!r} is not text/json_object/json_schema",
                        "response_format")


def chat_job(r: ChatRequest, ctx) -> chat.Job:
  turns = []
  reader = chat.MediaReader(ctx.backend, ctx.media_limits)
  for i, m in enumerate(r.messages):
    field = f"messages[{i}].content"
    if m.role == "tool":
      turns.append(chat.Turn("tool", tool_result={"name": m.name or m.tool_call_id or "",
                                                  "content": _text_of(m.content, field)[0]}))
      continue
    calls = []
    for j, c in enumerate(m.tool_calls or []):
      f = c.get("function") or {}
      try:
        args = json.loads(f.get("arguments") or "{}")
      except (TypeError, json.JSONDecodeError) as e:
        raise chat.BadRequest(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON: {e}",
                              f"messages[{i}].tool_calls") from e
      calls.append({"name": f.get("name", ""), "arguments": args})
    role = "system" if m.role == "developer" else m.role
    text, media = _text_of(m.content, field, reader, role)
    turns.append(chat.Turn(role, text, tool_calls=calls, media=media))
  tools, mode = _tools(r)
  thinking = r.thinking_budget if r.thinking_budget is not None else _EFFORT.get(
      r.reasoning_effort or "none", 0)
  return chat.Job(turns, _params(r, ctx, thinking), tools=tools, tool_mode=mode,
                  schema=_schema(r.response_format), n=r.n)


def _usage(results) -> dict:
  u = [r.usage for r in results]
  prompt = u[0].get("prompt_tokens", 0) if u else 0
  comp = sum(x.get("completion_tokens", 0) for x in u)
  return {"prompt_tokens": prompt, "completion_tokens": comp, "total_tokens": prompt + comp,
          "prompt_tokens_details": {"cached_tokens": u[0].get("cached_tokens", 0) if u else 0},
          "completion_tokens_details": {"reasoning_tokens":
                                        sum(x.get("thought_tokens", 0) for x in u)}}


def _finish(reason: str) -> str:
  return {"stop": "stop", "tool_calls": "tool_calls"}.get(reason, "length")


def _oa_calls(calls):
  return [{"id": c["id"], "type": "function",
           "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]


def router(ctx) -> fastapi.APIRouter:
  api = fastapi.APIRouter()

  @api.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{"id": ctx.model_id, "object": "model", "created": 0,
                                        "owned_by": "gemini"}]}

  @api.post("/v1/chat/completions")
  async def chat_completions(r: ChatRequest):
    ctx.check_model(r.model)
    job = chat_job(r, ctx)
    reqs = chat.make_requests(job, ctx.backend)
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    if r.cot_samples:
      if r.stream or r.n != 1:
        raise chat.BadRequest("cot_samples answers one non-streamed choice", "cot_samples")
      res, vote = await cot.routed(ctx.backend, job, r.cot_samples, r.cot_threshold)
      ctx.raise_errors([res])
      return {"id": cid, "object": "chat.completion", "created": created, "model": ctx.model_id,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                           "finish_reason": _finish(res.finish_reason), "logprobs": None}],
              "usage": _usage([res]), "cot_vote": vote}
    if r.stream:
      return EventSourceResponse(_chat_stream(ctx, job, reqs, cid, created, r), ping=15)
    results = [await chat.collect(ctx.backend, q, job) for q in reqs]
    ctx.raise_errors(results)
    choices = []
    for i, res in enumerate(results):
      msg = {"role": "assistant", "content": res.text if not res.tool_calls else (res.text or None)}
      if res.thoughts:
        msg["reasoning_content"] = res.thoughts
      if res.tool_calls:
        msg["tool_calls"] = _oa_calls(res.tool_calls)
      choices.append({"index": i, "message": msg, "finish_reason": _finish(res.finish_reason),
                      "logprobs": None})
    return {"id": cid, "object": "chat.completion", "created": created, "model": ctx.model_id,
            "choices": choices, "usage": _usage(results)}

  @api.post("/v1/completions")
  async def completions(r: CompletionRequest):
    ctx.check_model(r.model)
    if isinstance(r.prompt, list):
      bad = [t for t in r.prompt if not 0 <= t < ctx.backend.tokenizer.vocab_size]
      if bad or not r.prompt:
        raise chat.BadRequest(f"prompt token ids must be non-empty and in [0, vocab): {bad[:5]}",
                              "prompt")
      text = ctx.backend.tokenizer.decode(r.prompt)
    else:
      text = r.prompt
    if not text:
      raise chat.BadRequest("prompt is empty", "prompt")
    job = chat.Job([], _params(r, ctx), raw_prompt=text, n=r.n)
    reqs = chat.make_requests(job, ctx.backend)
    cid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
    if r.stream:
      return EventSourceResponse(_completion_stream(ctx, reqs, cid, created, r), ping=15)
    results = [await chat.collect(ctx.backend, q, job) for q in reqs]
    ctx.raise_errors(results)
    return {"id": cid, "object": "text_completion", "created": created, "model": ctx.model_id,
            "choices": [{"index": i, "text": res.text, "finish_reason": _finish(res.finish_reason),
                         "logprobs": None} for i, res in enumerate(results)],
            "usage": _usage(results)}

  return api


def _chunk(cid, created, model, choices, usage=None):
  out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": choices}
  if usage is not None:
    out["usage"] = usage
  return json.dumps(out)


async def _chat_stream(ctx, job, reqs, cid, created, r):
  results = []
  include_usage = bool(r.stream_options and r.stream_options.include_usage)
  forced = chat.is_forced_tool(job)
  for i, req in enumerate(reqs):
    res = chat.Result()
    yield _chunk(cid, created, ctx.model_id,
                 [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    async for ev in chat.stream(ctx.backend, req):
      if ev.kind == "delta":
        if ev.thought:
          res.thoughts += ev.text
          delta = {"reasoning_content": ev.text}
        else:
          res.text += ev.text
          if forced or (job.tools and job.tool_mode == "auto" and "<tool_call>" in res.text):
            continue
          delta = {"content": ev.text}
        yield _chunk(cid, created, ctx.model_id, [{"index": i, "delta": delta, "finish_reason": None}])
      else:
        res.finish_reason, res.usage, res.error = ev.finish_reason, ev.usage or {}, ev.error
    if res.error:
      yield json.dumps({"error": {"message": res.error, "type": "server_error"}})
      return
    chat.finish_tools(res, job)
    for k, c in enumerate(res.tool_calls):
      yield _chunk(cid, created, ctx.model_id, [{"index": i, "delta": {"tool_calls": [
          {"index": k, "id": c["id"], "type": "function",
           "function": {"name": c["name"], "arguments": ""}}]}, "finish_reason": None}])
      yield _chunk(cid, created, ctx.model_id, [{"index": i, "delta": {"tool_calls": [
          {"index": k, "function": {"arguments": json.dumps(c["arguments"])}}]},
          "finish_reason": None}])
    results.append(res)
    yield _chunk(cid, created, ctx.model_id,
                 [{"index": i, "delta": {}, "finish_reason": _finish(res.finish_reason)}])
  if include_usage:
    yield _chunk(cid, created, ctx.model_id, [], usage=_usage(results))
  yield "[DONE]"


async def _completion_stream(ctx, reqs, cid, created, r):
  results = []
  for i, req in enumerate(reqs):
    res = chat.Result()
    async for ev in chat.stream(ctx.backend, req):
      if ev.kind == "delta":
        res.text += ev.text
        yield json.dumps({"id": cid, "object": "text_completion", "created": created,
                          "model": ctx.model_id, "choices": [{"index": i, "text": ev.text,
                                                              "finish_reason": None}]})
      else:
        res.finish_reason, res.usage = ev.finish_reason, ev.usage or {}
    results.append(res)
    yield json.dumps({"id": cid, "object": "text_completion", "created": created,
                      "model": ctx.model_id, "choices": [{"index": i, "text": "",
                                                          "finish_reason": _finish(res.finish_reason)}]})
  if r.stream_options and r.stream_options.include_usage:
    yield json.dumps({"id": cid, "object": "text_completion", "created": created,
                      "model": ctx.model_id, "choices": [], "usage": _usage(results)})
  yield "[DONE]"
