"""The FastAPI application: both API shapes over one backend, /healthz, /metrics, optional API
keys (constant-time compare), a request-size limit, 429 + Retry-After on a full queue, and every
refusal a 4xx JSON error naming the field (OpenAI's `error.param`, Gemini's `error.status`)."""

from __future__ import annotations

import dataclasses
import hmac
import json
from typing import Optional, Sequence

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gemini.serve import chat, gemini_api, media as media_lib, metrics as metrics_lib
from gemini.serve import openai_api, safety
from gemini.serve import scheduler as scheduler_lib


@dataclasses.dataclass
class ServerConfig:
  model_id: str = "gemini-local"
  api_keys: Sequence[str] = ()
  max_body_bytes: int = 8 << 20
  max_tokens: int = 4096            # cap on max_tokens / maxOutputTokens
  default_max_tokens: int = 64
  timeout_s: float = 300.0
  media: media_lib.MediaLimits = media_lib.MediaLimits()


class Context:
  """What the routes share: backend, limits, metrics, the safety filter."""

  def __init__(self, backend, cfg: ServerConfig, metrics: metrics_lib.Metrics, safety_filter):
    self.backend, self.cfg, self.metrics, self.safety = backend, cfg, metrics, safety_filter
    self.model_id = cfg.model_id
    self.max_tokens, self.default_max_tokens = cfg.max_tokens, cfg.default_max_tokens
    self.timeout_s = cfg.timeout_s
    self.media_limits = cfg.media

  def check_model(self, model: str):
    name = model[len("models/"):] if model.startswith("models/") else model
    if name != self.model_id:
      raise chat.BadRequest(f"model {model!r} is not served here (this server has "
                            f"{self.model_id!r})", "model", status=404)

  def raise_errors(self, results):
    for r in results:
      if r.error:
        raise RuntimeError(r.error)


def _is_gemini(request: fastapi.Request) -> bool:
  path = request.url.path
  return path.startswith("/v1beta") or path.endswith(
      (":generateContent", ":streamGenerateContent", ":countTokens"))


def _error(request, status: int, message: str, param: Optional[str] = None, headers=None):
  if _is_gemini(request):
    st = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT",
          422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED"}.get(status, "INTERNAL")
    body = {"error": {"code": status, "message": message, "status": st}}
  else:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
  return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str:
  parts = [str(x) for x in loc if x not in ("body",)]
  out = ""
  for p in parts:
    out += f"[{p}]" if p.isdigit() else (("." if out else "") + p)
  return out or "body"


def create_app(backend, cfg: ServerConfig = ServerConfig(), metrics=None, safety_filter=None):
  metrics = metrics or metrics_lib.Metrics()
  ctx = Context(backend, cfg, metrics, safety_filter or safety.LexiconFilter())
  app = fastapi.FastAPI(title="gemini serve", docs_url=None, redoc_url=None)
  app.state.ctx = ctx

  @app.middleware("http")
  async def guard(request: fastapi.Request, call_next):
    if cfg.api_keys and request.url.path not in ("/healthz", "/metrics"):
      auth = request.headers.get("authorization", "")
      key = auth[7:] if auth.lower().startswith("bearer ") else (
          request.headers.get("x-goog-api-key") or request.query_params.get("key") or "")
      if not any(hmac.compare_digest(key.encode(), k.encode()) for k in cfg.api_keys):
        return _error(request, 401, "missing or wrong API key")
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
      return _error(request, 413, f"request body of {size} bytes exceeds {cfg.max_body_bytes}")
    response = await call_next(request)
    metrics.requests.labels(route=request.url.path.split(":")[-1][:40],
                            code=str(response.status_code)).inc()
    return response

  @app.exception_handler(RequestValidationError)
  async def invalid(request, exc: RequestValidationError):
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    field = _field(first.get("loc", ()))
    msg = first.get("msg", "invalid")
    if first.get("type") == "json_invalid":
      msg = "body is not valid JSON: " + str(first.get("ctx", {}).get("error", msg))
    elif field == "body" and first.get("type") == "missing":
      msg = "the request body must be a JSON object"
    return _error(request, 400, f"{field}: {msg}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1
                                                        else ""), field)

  @app.exception_handler(chat.BadRequest)
  async def bad(request, exc: chat.BadRequest):
    return _error(request, exc.status, str(exc), exc.param)

  @app.exception_handler(safety.SafetyError)
  async def bad_safety(request, exc: safety.SafetyError):
    return _error(request, 400, str(exc), exc.param)

  @app.exception_handler(scheduler_lib.QueueFull)
  async def full(request, exc):
    return _error(request, 429, str(exc), headers={"Retry-After": "1"})

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, exc: StarletteHTTPException):
    detail = str(exc.detail)
    if "parsing the body" in detail:
      detail = "body is not valid JSON (it could not be decoded)"
    return _error(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

  @app.exception_handler(json.JSONDecodeError)
  async def bad_json(request, exc):
    return _error(request, 400, f"body is not valid JSON: {exc}")

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "model": ctx.model_id, **backend.stats()}

  @app.get("/metrics")
  async def prom():
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")

  app.include_router(openai_api.router(ctx))
  app.include_router(gemini_api.router(ctx))
  return app
