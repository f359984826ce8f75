"""Gemini-shaped routes: /v1beta/models/{model}:generateContent, :streamGenerateContent
(alt=sse events or one JSON array), :countTokens, GET /v1beta/models[/{model}]; the POST routes
also under /v1 (the google-genai client's default API version)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Literal, Optional

import fastapi
import pydantic
from fastapi.responses import StreamingResponse
from sse_starlette.sse import EventSourceResponse

from gemini.serve import chat, safety
from gemini.serve import request as request_lib

_Cfg = pydantic.ConfigDict(extra="allow", populate_by_name=True)


class Part(pydantic.BaseModel):
  model_config = _Cfg
  text: Optional[str] = None
  inlineData: Optional[Dict[str, Any]] = pydantic.Field(None, alias="inline_data")
  functionCall: Optional[Dict[str, Any]] = pydantic.Field(None, alias="function_call")
  functionResponse: Optional[Dict[str, Any]] = pydantic.Field(None, alias="function_response")
  thought: Optional[bool] = None


class Content(pydantic.BaseModel):
  model_config = _Cfg
  role: Optional[Literal["user", "model", "function", "tool", "system"]] = None
  parts: List[Part] = pydantic.Field(default_factory=list)


class ThinkingConfig(pydantic.BaseModel):
  model_config = _Cfg
  thinkingBudget: Optional[int] = pydantic.Field(None, ge=-1, le=100_000, alias="thinking_budget")
  includeThoughts: bool = pydantic.Field(False, alias="include_thoughts")


class GenerationConfig(pydantic.BaseModel):
  model_config = _Cfg
  temperature: Optional[float] = pydantic.Field(None, ge=0.0, le=2.0)
  topP: Optional[float] = pydantic.Field(None, gt=0.0, le=1.0, alias="top_p")
  topK: Optional[int] = pydantic.Field(None, ge=0, le=1_000_000, alias="top_k")
  maxOutputTokens: Optional[int] = pydantic.Field(None, ge=1, le=1_000_000, alias="max_output_tokens")
  stopSequences: Optional[List[str]] = pydantic.Field(None, alias="stop_sequences")
  seed: Optional[int] = pydantic.Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)
  candidateCount: int = pydantic.Field(1, ge=1, le=8, alias="candidate_count")
  responseMimeType: Optional[str] = pydantic.Field(None, alias="response_mime_type")
  responseSchema: Optional[Dict[str, Any]] = pydantic.Field(None, alias="response_schema")
  responseJsonSchema: Optional[Dict[str, Any]] = pydantic.Field(None, alias="response_json_schema")
  thinkingConfig: Optional[ThinkingConfig] = pydantic.Field(None, alias="thinking_config")


class GenerateRequest(pydantic.BaseModel):
  model_config = _Cfg
  contents: List[Content] = pydantic.Field(min_length=1)
  systemInstruction: Optional[Content] = pydantic.Field(None, alias="system_instruction")
  generationConfig: GenerationConfig = pydantic.Field(default_factory=GenerationConfig,
                                                      alias="generation_config")
  tools: Optional[List[Dict[str, Any]]] = None
  toolConfig: Optional[Dict[str, Any]] = pydantic.Field(None, alias="tool_config")
  safetySettings: Optional[List[Dict[str, Any]]] = pydantic.Field(None, alias="safety_settings")


class CountRequest(pydantic.BaseModel):
  model_config = _Cfg
  contents: List[Content] = pydantic.Field(default_factory=list)
  generateContentRequest: Optional[GenerateRequest] = None


def _turns(contents: List[Content], system: Optional[Content],
           reader: chat.MediaReader) -> List[chat.Turn]:
  turns = []
  if system is not None:
    turns.append(chat.Turn("system", chat.clean_text("".join(p.text or "" for p in system.parts))))
  for i, c in enumerate(contents):
    role = {"model": "assistant", "function": "tool", "tool": "tool", "system": "system"}.get(
        c.role or "user", "user")
    text, calls, media = "", [], []
    for j, p in enumerate(c.parts):
      field = f"contents[{i}].parts[{j}]"
      if p.thought:
        continue
      if p.text is not None:
        text += chat.clean_text(p.text)
      elif p.functionCall is not None:
        name, args = p.functionCall.get("name"), p.functionCall.get("args", {})
        if not isinstance(name, str) or not isinstance(args, dict):
          raise chat.BadRequest(f"{field}.functionCall needs a string name and object args", field)
        calls.append({"name": name, "arguments": args})
      elif p.functionResponse is not None:
        name = p.functionResponse.get("name")
        if not isinstance(name, str):
          raise chat.BadRequest(f"{field}.functionResponse.name must be a string", field)
        turns.append(chat.Turn("tool", tool_result={"name": name, "content":
                                                    p.functionResponse.get("response")}))
      elif p.inlineData is not None:
        where = f"{field}.inlineData"
        d = p.inlineData
        if role != "user":
          raise chat.BadRequest(f"{where}: media parts are accepted in user turns only", where)
        media.append(reader.read_mime(d.get("mimeType", d.get("mime_type")), d.get("data"), where))
        text += chat.MEDIA_MARK
      else:
        raise chat.BadRequest(f"{field} has none of text/inlineData/functionCall/"
                              "functionResponse", field)
    if text or calls:
      turns.append(chat.Turn(role, text, tool_calls=calls, media=media))
  if not any(t.role in ("user", "tool") for t in turns):
    raise chat.BadRequest("contents: needs at least one user turn", "contents")
  return turns


def _tools(r: GenerateRequest):
  tools = []
  for i, t in enumerate(r.tools or []):
    decls = t.get("functionDeclarations", t.get("function_declarations"))
    if not isinstance(decls, list):
      raise chat.BadRequest(f"tools[{i}].functionDeclarations must be a list", f"tools[{i}]")
    for j, d in enumerate(decls):
      if not isinstance(d, dict):
        raise chat.BadRequest(f"tools[{i}].functionDeclarations[{j}] must be an object", "tools")
      params = d.get("parametersJsonSchema", d.get("parameters_json_schema"))
      if params is None and d.get("parameters") is not None:
        params = chat.json_schema_of_gemini(d["parameters"],
                                            f"tools[{i}].functionDeclarations[{j}].parameters")
      tools.append(chat.tool_decl(d.get("name"), d.get("description"), params,
                                  f"tools[{i}].functionDeclarations[{j}]"))
  mode = "auto"
  fc = (r.toolConfig or {}).get("functionCallingConfig", (r.toolConfig or {}).get(
      "function_calling_config")) or {}
  m = str(fc.get("mode", "AUTO")).upper()
  if m not in ("AUTO", "ANY", "NONE", "MODE_UNSPECIFIED", "VALIDATED"):
    raise chat.BadRequest(f"toolConfig.functionCallingConfig.mode {m!r} is not AUTO/ANY/NONE",
                          "toolConfig")
  allowed = fc.get("allowedFunctionNames", fc.get("allowed_function_names")) or []
  if m == "ANY":
    mode = allowed[0] if len(allowed) == 1 else "required"
    if not tools:
      raise chat.BadRequest("functionCallingConfig.mode=ANY but no functionDeclarations", "tools")
  elif m == "NONE":
    mode = "none"
  return tools, mode


def job_of(r: GenerateRequest, ctx) -> chat.Job:
  g = r.generationConfig
  tc = g.thinkingConfig
  budget = 0 if tc is None or tc.thinkingBudget is None else tc.thinkingBudget
  max_tokens = g.maxOutputTokens or ctx.default_max_tokens
  if max_tokens > ctx.max_tokens:
    raise chat.BadRequest(f"generationConfig.maxOutputTokens={max_tokens} exceeds this server's "
                          f"limit {ctx.max_tokens}", "generationConfig.maxOutputTokens")
  stops = tuple(g.stopSequences or ())
  if len(stops) > 5 or any(not s for s in stops):
    raise chat.BadRequest("generationConfig.stopSequences: at most 5 non-empty strings",
                          "generationConfig.stopSequences")
  params = request_lib.GenParams(
      max_tokens=max_tokens, temperature=1.0 if g.temperature is None else g.temperature,
      top_k=g.topK or 0, top_p=1.0 if g.topP is None else g.topP, seed=(g.seed or 0) % (1 << 63),
      stop=stops, thinking_budget=budget, timeout_s=ctx.timeout_s)
  schema = None
  if g.responseJsonSchema is not None:
    schema = g.responseJsonSchema
  elif g.responseSchema is not None:
    schema = chat.json_schema_of_gemini(g.responseSchema, "generationConfig.responseSchema")
  elif g.responseMimeType == "application/json":
    schema = {"type": "object"}
  elif g.responseMimeType not in (None, "text/plain"):
    raise chat.BadRequest(f"generationConfig.responseMimeType {g.responseMimeType!r} is not "
                          "text/plain or application/json", "generationConfig.responseMimeType")
  tools, mode = _tools(r)
  turns = _turns(r.contents, r.systemInstruction, chat.MediaReader(ctx.backend, ctx.media_limits))
  return chat.Job(turns, params, tools=tools, tool_mode=mode,
                  schema=schema, n=g.candidateCount)


_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "timeout": "MAX_TOKENS",
           "cancelled": "OTHER", "error": "OTHER", "safety": "SAFETY"}


def _usage(results, prompt_tokens: int) -> dict:
  thoughts = sum(r.usage.get("thought_tokens", 0) for r in results)
  cand = sum(r.usage.get("completion_tokens", 0) for r in results) - thoughts
  out = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": cand,
         "totalTokenCount": prompt_tokens + cand + thoughts}
  if thoughts:
    out["thoughtsTokenCount"] = thoughts
  cached = results[0].usage.get("cached_tokens", 0) if results else 0
  if cached:
    out["cachedContentTokenCount"] = cached
  return out


def _candidate(i, res: chat.Result, include_thoughts: bool, ratings) -> dict:
  parts = []
  if include_thoughts and res.thoughts:
    parts.append({"text": res.thoughts, "thought": True})
  if res.text:
    parts.append({"text": res.text})
  for c in res.tool_calls:
    parts.append({"functionCall": {"name": c["name"], "args": c["arguments"], "id": c["id"]}})
  return {"content": {"role": "model", "parts": parts}, "index": i,
          "finishReason": _FINISH.get(res.finish_reason, "OTHER"), "safetyRatings": ratings}


def router(ctx) -> fastapi.APIRouter:
  api = fastapi.APIRouter()

  def model_info():
    return {"name": f"models/{ctx.model_id}", "displayName": ctx.model_id, "version": "1",
            "inputTokenLimit": ctx.backend.max_len, "outputTokenLimit": ctx.max_tokens,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens"]}

  @api.get("/v1beta/models")
  async def list_models():
    return {"models": [model_info()]}

  @api.get("/v1beta/models/{model}")
  async def get_model(model: str):
    ctx.check_model(model)
    return model_info()

  @api.post("/v1beta/models/{model}:generateContent")
  @api.post("/v1/models/{model}:generateContent")
  async def generate(model: str, r: GenerateRequest):
    ctx.check_model(model)
    job = job_of(r, ctx)
    include = bool(r.generationConfig.thinkingConfig and
                   r.generationConfig.thinkingConfig.includeThoughts)
    prompt_text = "\n".join(t.text for t in job.turns)
    blocked, ratings = ctx.safety.check(prompt_text, r.safetySettings, "safetySettings")
    if blocked:
      return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
              "usageMetadata": {"promptTokenCount": 0, "totalTokenCount": 0}}
    reqs = chat.make_requests(job, ctx.backend)
    results = [await chat.collect(ctx.backend, q, job) for q in reqs]
    ctx.raise_errors(results)
    cands = []
    for i, res in enumerate(results):
      out_blocked, out_ratings = ctx.safety.check(res.text, r.safetySettings, "safetySettings")
      if out_blocked:
        res.text, res.tool_calls, res.finish_reason = "", [], "safety"
      cands.append(_candidate(i, res, include, out_ratings))
    return {"candidates": cands, "usageMetadata": _usage(results, len(reqs[0].tokens)),
            "modelVersion": ctx.model_id, "promptFeedback": {"safetyRatings": ratings}}

  @api.post("/v1beta/models/{model}:streamGenerateContent")
  @api.post("/v1/models/{model}:streamGenerateContent")
  async def stream_generate(model: str, r: GenerateRequest, request: fastapi.Request):
    ctx.check_model(model)
    job = job_of(r, ctx)
    include = bool(r.generationConfig.thinkingConfig and
                   r.generationConfig.thinkingConfig.includeThoughts)
    blocked, ratings = ctx.safety.check("\n".join(t.text for t in job.turns), r.safetySettings,
                                        "safetySettings")
    reqs = [] if blocked else chat.make_requests(job, ctx.backend)
    events = _stream_events(ctx, job, reqs, include, blocked, ratings, r.safetySettings)
    if request.query_params.get("alt") == "sse":
      return EventSourceResponse(events, ping=15)
    return StreamingResponse(_json_array(events), media_type="application/json")

  @api.post("/v1beta/models/{model}:countTokens")
  @api.post("/v1/models/{model}:countTokens")
  async def count_tokens(model: str, r: CountRequest):
    ctx.check_model(model)
    if r.generateContentRequest is not None:
      job = job_of(r.generateContentRequest, ctx)
    else:
      if not r.contents:
        raise chat.BadRequest("countTokens needs contents or generateContentRequest", "contents")
      job = chat.Job(_turns(r.contents, None, chat.MediaReader(ctx.backend, ctx.media_limits)),
                     request_lib.GenParams())
    return {"totalTokens": len(chat.prompt_tokens(job, ctx.backend.tokenizer,
                                                  getattr(ctx.backend, "cfg", None)))}

  return api


async def _json_array(events):
  first = True
  yield "["
  async for e in events:
    yield ("" if first else ",\r\n") + e
    first = False
  yield "]"


async def _stream_events(ctx, job, reqs, include, blocked, ratings, settings):
  if blocked:
    yield json.dumps({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings}})
    return
  results = []
  forced = chat.is_forced_tool(job)
  for i, req in enumerate(reqs):
    res = chat.Result()
    async for ev in chat.stream(ctx.backend, req):
      if ev.kind == "delta":
        if ev.thought:
          res.thoughts += ev.text
          if include:
            yield json.dumps({"candidates": [{"content": {"role": "model", "parts": [
                {"text": ev.text, "thought": True}]}, "index": i}]})
          continue
        res.text += ev.text
        if forced or settings or (job.tools and "<tool_call>" in res.text):
          continue
        yield json.dumps({"candidates": [{"content": {"role": "model", "parts": [
            {"text": ev.text}]}, "index": i}], "modelVersion": ctx.model_id})
      else:
        res.finish_reason, res.usage, res.error = ev.finish_reason, ev.usage or {}, ev.error
    if res.error:
      yield json.dumps({"error": {"code": 500, "message": res.error, "status": "INTERNAL"}})
      return
    chat.finish_tools(res, job)
    results.append(res)
    out_blocked, out_ratings = ctx.safety.check(res.text, settings, "safetySettings")
    parts = []
    if out_blocked:
      res.finish_reason = "safety"
    elif forced or settings or res.tool_calls or (job.tools and "<tool_call>" in res.text):
      parts = _candidate(i, res, False, out_ratings)["content"]["parts"]
    final = {"candidates": [{"content": {"role": "model", "parts": parts}, "index": i,
                             "finishReason": _FINISH.get(res.finish_reason, "OTHER"),
                             "safetyRatings": out_ratings}],
             "modelVersion": ctx.model_id}
    if i == len(reqs) - 1:
      final["usageMetadata"] = _usage(results, len(reqs[0].tokens))
    yield json.dumps(final)
