"""The gateway's OpenAI HTTP surface: a request in, an OpenAI answer or OpenAI error out.

``complete_response`` reads the body, parses it (``serving.protocol``), calls the gateway
core and answers JSON, or server-sent events in OpenAI's chunk shape for ``stream: true``
(the tier engine answers a call whole, so the text comes as one chunk; see
``protocol.stream_chunks``). ``error_response`` maps every refusal to OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``) and a status an OpenAI SDK handles
as meant: 400 for a bad or unsupported request, 403 for a guardrail refusal (final: the
SDKs retry 429), 404 for an unknown model, 503 for a tier that cannot start.
``install_error_handlers`` gives unknown paths (404), wrong methods (405), FastAPI's
validation errors (422) and uncaught exceptions (500) the same shape. With a
``serving.apikeys.KeyRing`` the caller's API key is checked before the body is read (401
``invalid_api_key``) and the parsed request is attributed to the key's team and repo (403
for a repo or purpose outside the key) before the core sees it.

The Ray Serve ingress (``serving.gateway``) and the tests (a plain FastAPI app over a
``GatewayCore`` with fake tiers) use the same functions. Imports FastAPI, never Ray.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import PermanentError, TransientError
from contracts.guardrails import GuardrailRefusal
from policies.policy import DocumentError
from serving.apikeys import AccessRefused, KeyRing, attribute
from serving.engine import UnknownAdapter
from serving.gateway_core import UnknownModel
from serving.protocol import (
    SSE_DONE,
    BadRequest,
    ParsedRequest,
    error_body,
    parse_request,
    sse_event,
    stream_chunks,
)
from serving.tiers import TierStartFailed
from store.errors import NotFoundError

__all__ = ["GUARDRAIL_STATUS", "complete_response", "error_response", "install_error_handlers",
           "openai_error"]

_log = logging.getLogger(__name__)
GUARDRAIL_STATUS = 403
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content=error_body(message, kind=kind, param=param, code=code,
                                           **extra))


def error_response(exc: BaseException) -> JSONResponse:
    """The HTTP answer to an exception raised while serving a completion."""
    if isinstance(exc, BadRequest):
        return JSONResponse(status_code=400, content=exc.as_error())
    if isinstance(exc, AccessRefused):
        return JSONResponse(status_code=exc.status, content=exc.as_error())
    if isinstance(exc, GuardrailRefusal):
        return JSONResponse(status_code=GUARDRAIL_STATUS, content=exc.as_error())
    if isinstance(exc, UnknownModel):
        return openai_error(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, TierStartFailed):
        return openai_error(503, str(exc), kind="server_error", code="tier_unavailable")
    if isinstance(exc, DocumentError | NotFoundError):
        # a policy_version the fleet cannot serve, or one the store does not have
        field = "autopilot.policy_version"
        return openai_error(400, f"{field}: {exc}", param=field, code="invalid_value",
                            fields=[field])
    if isinstance(exc, UnknownAdapter | PermanentError):
        return openai_error(400, str(exc), code="invalid_value")
    if isinstance(exc, TransientError):
        return openai_error(503, str(exc), kind="server_error", code="unavailable")
    _log.error("request failed", exc_info=exc)  # e.g. a tier replica died mid-call
    return openai_error(500, f"{type(exc).__name__}: {str(exc)[:500]}", kind="server_error",
                        code="internal_error")


async def _events(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield sse_event(chunk)
    yield SSE_DONE


async def complete_response(request: Request, kind: str,
                            complete: Callable[[ParsedRequest], Awaitable[dict[str, Any]]],
                            keys: KeyRing | None = None) -> Response:
    """Serve one ``/v1/completions`` (``kind`` "completion") or ``/v1/chat/completions``
    ("chat") request with ``complete`` (``GatewayCore.complete``). A refusal is known
    before any byte is sent, so a streamed request is refused with a plain error status.
    ``keys``: check the caller's API key and attribute the request to it (None: no check,
    the request's own fields)."""
    try:
        identity = None if keys is None else await keys.identify_async(request.headers)
    except AccessRefused as exc:
        return error_response(exc)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return openai_error(400, f"<body>: not JSON ({exc})", code="invalid_json",
                            fields=["<body>"])
    try:
        parsed = parse_request(body, kind, request.headers.get("traceparent"))  # type: ignore[arg-type]
        parsed = attribute(parsed, identity)
        result = await complete(parsed)
    except Exception as exc:  # noqa: BLE001 - every refusal is answered in OpenAI's shape
        return error_response(exc)
    if parsed.stream:
        chunks = stream_chunks(result, include_usage=parsed.include_usage)
        return StreamingResponse(_events(chunks), media_type="text/event-stream",
                                 headers=_SSE_HEADERS)
    # orjson straight to bytes: FastAPI's generic encoder costs more than the routing.
    return Response(orjson.dumps(result), media_type="application/json")


def install_error_handlers(app: FastAPI) -> FastAPI:
    """Answer unknown paths, wrong methods, validation errors and uncaught exceptions in
    OpenAI's error shape instead of FastAPI's ``{"detail": ...}``."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return openai_error(404, f"Invalid URL ({where}): no such endpoint",
                                code="unknown_url", headers=exc.headers)
        if exc.status_code == 405:
            return openai_error(405, f"Method not allowed ({where})",
                                code="method_not_allowed", headers=exc.headers)
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return openai_error(exc.status_code, str(exc.detail), kind=kind, headers=exc.headers)

    @app.exception_handler(AccessRefused)
    async def _access_refused(request: Request, exc: AccessRefused) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [(".".join(str(p) for p in e.get("loc", ())) or "<body>", e.get("msg", ""))
                    for e in exc.errors()]
        message = "; ".join(f"{f}: {m}" for f, m in problems) or "invalid request"
        return openai_error(422, message, param=problems[0][0] if problems else None,
                            code="invalid_value", fields=[f for f, _ in problems])

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    return app
