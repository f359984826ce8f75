"""What both HTTP shapes share: a conversation -> prompt tokens, a run as async events, the
tool-call and structured-output plumbing, and the collected result.

A `Turn` is one message in neutral form (OpenAI messages and Gemini contents both map to it);
tools are declared in the system turn; an assistant's tool call is rendered as
`<tool_call>{"name":..,"arguments":..}</tool_call>` and a tool's result as a `tool` turn
`<tool_result>{...}</tool_result>`, so a result is fed back as the next turn. With a required
tool (OpenAI tool_choice=required/named, Gemini mode ANY) or a response schema the answer is
decoded under the JSON-schema constraint, so it always parses and validates.

Media (images, audio, video; decoded by `media.py`) sit in a user turn's text as MEDIA_MARK,
one per item in order; `prompt_layout` encodes the text around them and puts each item where
its mark was, laid out as the data pipeline does: `<media_start>`, n placeholder ids (n =
`multimodal.num_tokens`), `<media_end>`. The Request carries (start, kind, array) per item and
the engine builds the model batch with `multimodal.build_batch`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from typing import AsyncIterator, Dict, List, Optional

import numpy as np

from gemini.model import multimodal
from gemini.serve import constrain, media as media_lib
from gemini.serve import request as request_lib
from gemini.serve import tokenizer as tokenizer_lib


class BadRequest(ValueError):
  """A request the server refuses (HTTP 400); `param` names the offending field."""

  def __init__(self, message: str, param: Optional[str] = None, status: int = 400):
    super().__init__(message)
    self.param, self.status = param, status


@dataclasses.dataclass
class Turn:
  role: str                             # system | user | assistant | tool
  text: str = ""
  tool_calls: List[dict] = dataclasses.field(default_factory=list)  # {"name","arguments"(dict)}
  tool_result: Optional[dict] = None    # {"name", "content"}
  media: List[media_lib.Media] = dataclasses.field(default_factory=list)  # one MEDIA_MARK each


@dataclasses.dataclass
class Job:
  turns: List[Turn]
  params: request_lib.GenParams
  tools: List[dict] = dataclasses.field(default_factory=list)   # {"name","description","parameters"}
  tool_mode: str = "auto"               # auto | required | none | <a tool name>
  schema: Optional[dict] = None
  raw_prompt: Optional[str] = None      # /v1/completions: no chat template
  n: int = 1


@dataclasses.dataclass
class Result:
  text: str = ""
  thoughts: str = ""
  tool_calls: List[dict] = dataclasses.field(default_factory=list)
  finish_reason: str = "stop"
  usage: dict = dataclasses.field(default_factory=dict)
  error: Optional[str] = None


class MediaReader:
  """Decodes one request's media parts for the backend's model, at most limits.max_items."""

  def __init__(self, backend, limits: media_lib.MediaLimits):
    self.backend, self.limits, self.count = backend, limits, 0

  def read(self, kind: str, raw: bytes, field: str) -> media_lib.Media:
    self.count += 1
    if self.count > self.limits.max_items:
      raise BadRequest(f"{field}: more than {self.limits.max_items} media parts in one request",
                       field)
    need = "audio" if kind == "audio" else "vision"
    if not getattr(self.backend, need, False):
      raise BadRequest(f"{field}: this model has no {need} encoder (it cannot take {kind} "
                       f"input)", field)
    try:
      return media_lib.Media(kind, media_lib.decode(kind, raw, self.backend.cfg, self.limits),
                             field)
    except media_lib.MediaError as e:
      raise BadRequest(f"{field}: {e}", field) from e

  def read_mime(self, mime, data_b64, field: str) -> media_lib.Media:
    """A (mime type, base64 data) part, e.g. Gemini's inlineData."""
    if not isinstance(mime, str):
      raise BadRequest(f"{field}.mimeType must be a string, got {type(mime).__name__}", field)
    try:
      kind = media_lib.kind_of_mime(mime)
      raw = media_lib.decode_base64(data_b64, "data")
    except media_lib.MediaError as e:
      raise BadRequest(f"{field}: {e}", field) from e
    return self.read(kind, raw, field)


def render(job: Job, tok) -> str:
  if job.raw_prompt is not None:
    return job.raw_prompt
  msgs: List[Dict[str, str]] = []
  system = [t.text for t in job.turns if t.role == "system"]
  if job.tools and job.tool_mode != "none":
    system.append(tokenizer_lib.tool_prompt(job.tools))
  if system:
    msgs.append({"role": "system", "content": "\n".join(system)})
  for t in job.turns:
    if t.role == "system":
      continue
    if t.role == "tool":
      body = json.dumps(t.tool_result, ensure_ascii=False)
      msgs.append({"role": "tool", "content": f"<tool_result>{body}</tool_result>"})
      continue
    text = t.text
    for c in t.tool_calls:
      text += tok.tool_open + json.dumps({"name": c["name"], "arguments": c["arguments"]},
                                         ensure_ascii=False) + tok.tool_close
    msgs.append({"role": t.role, "content": text})
  return tok.render_chat(msgs)


MEDIA_MARK = "\ue000"     # a private-use character: where a media item sits in a turn's text


def clean_text(text: str) -> str:
  """Client text with MEDIA_MARK removed (it only ever comes from a decoded media part)."""
  return text.replace(MEDIA_MARK, "\ufffd")


def _same_shapes(items: List[media_lib.Media]) -> List[np.ndarray]:
  """One array shape per kind, as a model batch needs: shorter audio clips are zero-padded to
  the longest, shorter videos repeat their last frame (what a training batch does)."""
  out = [m.array for m in items]
  for kind in ("audio", "video"):
    idx = [i for i, m in enumerate(items) if m.kind == kind]
    if len(idx) < 2:
      continue
    longest = max(out[i].shape[0] for i in idx)
    for i in idx:
      a = out[i]
      extra = longest - a.shape[0]
      if extra:
        tail = (np.zeros((extra,), a.dtype) if kind == "audio"
                else np.repeat(a[-1:], extra, axis=0))
        out[i] = np.concatenate([a, tail])
  return out


def prompt_layout(job: Job, tok, cfg=None):
  """-> (prompt ids, [(start, kind, array), ...]): the chat prompt with every media item's
  placeholder ids laid in (cfg: the model config, needed when there are media)."""
  items = [m for t in job.turns if t.role != "system" for m in t.media]
  text = render(job, tok)
  if not items:
    ids = tok.encode(text)
    return ([tok.bos_id] + ids if tok.bos_id is not None else ids), []
  pieces = text.split(MEDIA_MARK)
  if len(pieces) != len(items) + 1:
    raise BadRequest(f"media parts are accepted in user turns only ({len(items)} items, "
                     f"{len(pieces) - 1} placed)", "messages")
  ids = [tok.bos_id] if tok.bos_id is not None else []
  marks = tok.media_ids()
  layout = []
  for piece, item, array in zip(pieces, items + [None], _same_shapes(items) + [None]):
    ids += tok.encode(piece) if piece else []
    if item is None:
      break
    n = multimodal.num_tokens(item.kind, array.shape, cfg)
    if "start" in marks:
      ids.append(marks["start"])
    layout.append((len(ids), item.kind, array))
    ids += [marks.get(item.kind, 0)] * n
    if "end" in marks:
      ids.append(marks["end"])
  return ids, layout


def prompt_tokens(job: Job, tok, cfg=None) -> List[int]:
  return prompt_layout(job, tok, cfg)[0]


def constraint_for(job: Job, backend) -> Optional[object]:
  """The answer's Constraint (tool call or schema), or None; BadRequest for bad schemas."""
  schema, field = None, None
  if job.tools and job.tool_mode not in ("auto", "none"):
    only = None if job.tool_mode == "required" else job.tool_mode
    try:
      schema = constrain.tool_call_schema(job.tools, only)
    except constrain.SchemaError as e:
      raise BadRequest(str(e), "tool_choice") from e
    field = "tools"
  elif job.schema is not None:
    schema, field = job.schema, "response_format"
  if schema is None:
    return None
  if not backend.supports_control:
    raise BadRequest("structured output and forced tool calls need the jax backend "
                     "(the native runtime's module has no per-token masks)", field)
  llt = getattr(backend, "_llg", None)
  if llt is None:
    llt = backend._llg = backend.tokenizer.llg_tokenizer()
  try:
    grammar = constrain.compile_schema(llt, schema, field)
    return constrain.Constraint(llt, grammar, backend.tokenizer.vocab_size)
  except constrain.SchemaError as e:
    raise BadRequest(str(e), field) from e


def make_requests(job: Job, backend) -> List[request_lib.Request]:
  """n Requests (seed, seed+1, ... so the choices differ when sampling), checked to fit."""
  tokens, layout = prompt_layout(job, backend.tokenizer, getattr(backend, "cfg", None))
  out = []
  for i in range(job.n):
    p = dataclasses.replace(job.params, seed=job.params.seed + i,
                            constraint=constraint_for(job, backend))
    req = request_lib.Request(tokens, p, emit=lambda ev: None, media=layout)
    try:
      backend.check_fits(req)
    except ValueError as e:
      raise BadRequest(str(e), "messages") from e
    out.append(req)
  return out


async def stream(backend, req: request_lib.Request) -> AsyncIterator[request_lib.Event]:
  """Submits req and yields its events; closing the iterator (client gone) cancels it."""
  loop = asyncio.get_running_loop()
  q: asyncio.Queue = asyncio.Queue()
  req.emit = lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev)
  backend.submit(req)
  try:
    while True:
      ev = await q.get()
      yield ev
      if ev.kind == "done":
        return
  finally:
    req.cancel()


async def collect(backend, req, job: Job) -> Result:
  res = Result()
  async for ev in stream(backend, req):
    if ev.kind == "delta":
      if ev.thought:
        res.thoughts += ev.text
      else:
        res.text += ev.text
    else:
      res.finish_reason, res.usage, res.error = ev.finish_reason, ev.usage or {}, ev.error
  finish_tools(res, job)
  return res


_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str, job: Job) -> List[dict]:
  """Tool calls in an answer: the whole answer under a forced-tool constraint, else any
  <tool_call>{json}</tool_call> naming a declared tool."""
  names = {t["name"] for t in job.tools}
  if job.tools and job.tool_mode not in ("auto", "none"):
    bodies = [text]
  elif job.tools and job.tool_mode == "auto":
    bodies = _CALL.findall(text)
  else:
    return []
  calls = []
  for b in bodies:
    try:
      obj = json.loads(b)
    except json.JSONDecodeError:
      continue
    if isinstance(obj, dict) and obj.get("name") in names:
      calls.append({"id": "call_" + uuid.uuid4().hex[:24], "name": obj["name"],
                    "arguments": obj.get("arguments", {})})
  return calls


def finish_tools(res: Result, job: Job):
  res.tool_calls = parse_tool_calls(res.text, job)
  if res.tool_calls:
    res.text = _CALL.sub("", res.text).strip() if job.tool_mode == "auto" else ""
    res.finish_reason = "tool_calls"


def is_forced_tool(job: Job) -> bool:
  return bool(job.tools) and job.tool_mode not in ("auto", "none")


def json_schema_of_gemini(schema, field: str = "responseSchema"):
  """Gemini's Schema (OpenAPI subset: upper-case types, nullable, propertyOrdering) -> JSON
  Schema; BadRequest naming the field for anything that is not a schema."""
  if not isinstance(schema, dict):
    raise BadRequest(f"{field} must be an object, got {type(schema).__name__}", field)
  out = {}
  for k, v in schema.items():
    if k == "type":
      if not isinstance(v, str):
        raise BadRequest(f"{field}.type must be a string, got {v!r}", field)
      out["type"] = v.lower()
      if out["type"] not in ("string", "number", "integer", "boolean", "array", "object", "null"):
        raise BadRequest(f"{field}.type {v!r} is not a schema type", field)
    elif k == "properties":
      if not isinstance(v, dict):
        raise BadRequest(f"{field}.properties must be an object", field)
      out[k] = {n: json_schema_of_gemini(s, f"{field}.properties.{n}") for n, s in v.items()}
    elif k == "items":
      out[k] = json_schema_of_gemini(v, f"{field}.items")
    elif k in ("anyOf", "any_of"):
      out["anyOf"] = [json_schema_of_gemini(s, f"{field}.anyOf") for s in v]
    elif k in ("propertyOrdering", "property_ordering", "title", "example"):
      continue
    elif k == "nullable":
      continue
    elif k in ("minItems", "maxItems", "minLength", "maxLength", "min_items", "max_items",
               "min_length", "max_length"):
      camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k)
      out[camel] = int(v)
    else:
      out[k] = v
  if schema.get("nullable"):
    out = {"anyOf": [out, {"type": "null"}]}
  if out.get("type") == "object" and "properties" in out:
    out.setdefault("additionalProperties", False)
  return out


def tool_decl(name, description, parameters, field: str) -> dict:
  if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", name):
    raise BadRequest(f"{field}.name must be a function name (letters, digits, _ . -), got {name!r}",
                     field)
  if parameters is not None and not isinstance(parameters, dict):
    raise BadRequest(f"{field}.parameters must be a JSON schema object", field)
  return {"name": name, "description": description or "", "parameters": parameters or
          {"type": "object", "properties": {}}}

