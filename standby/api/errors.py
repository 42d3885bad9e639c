"""One error envelope for every refusal: {"error": {"code", "message", "field"?}}."""
from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from standby.api.contract import parameter_refusal
from standby.domain.errors import Refusal

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal the API answers with: `status`, the envelope's code, message and field, response `headers`, and
    `extra` members of the envelope's error object (e.g. `primary_site` and `primary_url` for a 503 that names
    where writes go now)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers
        self.extra = extra


def error_body(code: str, message: str, field: str | None = None, extra: dict | None = None) -> dict:
    body = Refusal(code, message, field).envelope()
    if extra:
        body["error"].update(extra)
    return body


def field_path(loc) -> str:
    """('body', 'goods', 2, 'hs_code') -> 'goods[2].hs_code'"""
    out = ""
    for part in loc:
        if part in ("body", "path", "query", "header"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.field, exc.extra), exc.status, headers=exc.headers)


async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    for error in exc.errors():  # a path or header parameter off its published shape: the project's own refusal
        loc = error.get("loc", ())
        refusal = parameter_refusal(loc[0], str(loc[1]), error.get("input")) if len(loc) == 2 else None
        if refusal is not None:
            return JSONResponse(refusal.envelope(), refusal.status)
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body("malformed_json", f"the body is not valid JSON: {first.get('msg')}"), 400)
    field = field_path(first.get("loc", ())) or None
    if first.get("type") == "missing" and field is None:
        return JSONResponse(error_body("body_missing", "a JSON body is required"), 422)
    problems = [f"{field_path(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in exc.errors()[:5]]
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return JSONResponse(error_body("invalid_request", "; ".join(problems) + more, field), 422)


async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI wraps any failure while decoding the body (bad UTF-8, an integer too long to parse) in a plain 400.
    if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeDecodeError, ValueError)):
        return JSONResponse(error_body("malformed_json", f"the body is not valid JSON: {exc.__cause__}"[:300]), 400)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    return JSONResponse(error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)), exc.status_code,
                        headers=getattr(exc, "headers", None))


async def on_store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """A read whose database did not answer (connection lost, locked, pool exhausted): 503, worth a retry."""
    log.warning("a read failed, the database did not answer: %s", getattr(exc, "orig", None) or exc)
    return JSONResponse(error_body("store_unavailable", f"the site's database did not answer ({type(exc).__name__}); "
                                                        "retry"), 503, headers={"Retry-After": "1"})


async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """Any other failure: the one error body with a 500, never a bare text page. Starlette raises the exception on
    once this is sent, so the server logs it with its stack trace."""
    return JSONResponse(error_body("internal_error", f"the site failed on this request ({type(exc).__name__}); "
                                                     "it is logged"), 500)


def declared_over_limit(content_length: bytes | str | None, limit: int) -> bool:
    """True when a request's Content-Length header is over `limit` or not a number (None: not declared)."""
    return content_length is not None and (not content_length.isdigit() or int(content_length) > limit)


class BodyLimit:
    """Pure ASGI middleware: refuses bodies over `limit` bytes with 413 before the app reads them whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if declared_over_limit(dict(scope.get("headers") or []).get(b"content-length"), self.limit):
            return await self._refuse(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:  # raised where no route caught it (a route's body reader answers 413 itself)
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        response = JSONResponse(error_body("body_too_large", f"the body is over the {self.limit}-byte limit"), 413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(StarletteHTTPException):
    """An HTTP exception, so FastAPI's body reader passes it through as a 413 rather than a generic 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"the body is over the {limit}-byte limit")
