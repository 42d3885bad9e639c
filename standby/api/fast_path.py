"""The hot routes' well-formed requests, answered without FastAPI's per-request machinery.

Five writes and the declaration read are nearly every request a site serves. For each, FastAPI walks its middleware,
routes by regex, solves the dependencies (header, bearer scheme, path and body parameters) and only then runs the
endpoint: profiled at 20x design, that machinery was more of the HTTP process's time than the endpoints themselves.

Contract (`FastPath`, a pure ASGI middleware wrapped around the FastAPI app):
- It answers a request only when the request is well formed: the route's method and path (a published declaration
  number), exactly one `Authorization` header whose bearer token the site knows with a role the route admits, for a
  write exactly one `Idempotency-Key` matching the published pattern, and for a write with a body a
  `Content-Type: application/json`, a `Content-Length` within the body limit and a body the route's model accepts.
- Any other request goes to the FastAPI app untouched (a body already read is replayed), so every refusal of a
  request's shape comes from the one place that publishes them, and the OpenAPI document stays the app's own.
- An answered request runs the same route function the FastAPI endpoint runs (`HotRoutes`); an exception it raises is
  answered by the app's own exception handler for that exception, so the bytes are those FastAPI would send.
- `HotRoutes.answered` counts the requests it answered, by route, in this process (the tests read it).
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from standby.api.contract import KEY_PATTERN, NUMBER_PATTERN
from standby.api.errors import ApiError, declared_over_limit
from standby.clearance.commands import Principal

log = logging.getLogger(__name__)

_NUMBER = NUMBER_PATTERN.strip("^$")
_WRITE_BY_NUMBER = re.compile(rf"/v1/declarations/({_NUMBER})/(registration|amendments|payments|decision)")
_READ = re.compile(rf"/v1/declarations/({_NUMBER})")
_KEY = re.compile(KEY_PATTERN)
_WANTED = {b"authorization", b"idempotency-key", b"content-type", b"content-length"}

Authorize = Callable[[str | None], Principal]  # raises ApiError when the header does not admit the caller


@dataclass(frozen=True)
class HotWrite:
    """A write route: who may call it, its body's model (None: no body), and the route function the FastAPI endpoint
    also calls: (principal, idempotency key, body or None, declaration number or None) -> response."""

    authorize: Authorize
    body: type[BaseModel] | None
    carry: Callable[[Principal, str, BaseModel | None, str | None], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoutes:
    """What the fast path may answer: writes by name ("declarations" for the pre-declaration, else the action in the
    path), and the declaration read: (number, principal) -> response, a blocking function run in the threadpool."""

    writes: dict[str, HotWrite]
    read_authorize: Authorize
    read: Callable[[str, Principal], Response]
    answered: Counter = field(default_factory=Counter)


class FastPath:
    def __init__(self, app, routes: HotRoutes, limit: int, handlers: dict):
        self.app, self.routes, self.limit, self.handlers = app, routes, limit, handlers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST":
                return await self._write(scope, receive, send, path)
            if method == "GET" and (read := _READ.fullmatch(path)) is not None:
                return await self._read(scope, receive, send, read.group(1))
        await self.app(scope, receive, send)

    async def _read(self, scope, receive, send, number: str) -> None:
        headers = _headers(scope)
        principal = _admitted(self.routes.read_authorize, headers)
        if principal is None or not self._within_limit(headers):
            return await self.app(scope, receive, send)
        self.routes.answered["read"] += 1
        await self._answer(scope, receive, send, lambda: run_in_threadpool(self.routes.read, number, principal))

    async def _write(self, scope, receive, send, path: str) -> None:
        if path == "/v1/declarations":
            name, number = "declarations", None
        elif (match := _WRITE_BY_NUMBER.fullmatch(path)) is not None:
            name, number = match.group(2), match.group(1)
        else:
            return await self.app(scope, receive, send)
        route, headers = self.routes.writes[name], _headers(scope)
        principal = _admitted(route.authorize, headers)
        key = headers.get(b"idempotency-key")
        if principal is None or key is None or not _KEY.fullmatch(key) or not self._within_limit(headers):
            return await self.app(scope, receive, send)
        body = None
        if route.body is not None:
            try:
                raw = await self._body(headers, receive)
            except _Disconnected:
                return  # the client went away before its body arrived: nothing to answer
            if raw is None:
                return await self.app(scope, receive, send)
            body = _parsed(route.body, raw)
            if body is None:
                return await self.app(scope, _replaying(raw, receive), send)
        self.routes.answered[name] += 1
        await self._answer(scope, receive, send, lambda: route.carry(principal, key, body, number))

    def _within_limit(self, headers: dict) -> bool:
        """False when the declared Content-Length is over the limit or not a number: the body limit refuses those,
        even on a route that reads no body."""
        return not declared_over_limit(headers.get(b"content-length"), self.limit)

    async def _body(self, headers: dict, receive) -> bytes | None:
        """The whole body, or None (nothing read) when the request is not a JSON body of a declared length."""
        if headers.get(b"content-type") != "application/json" or headers.get(b"content-length") is None:
            return None
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _answer(self, scope, receive, send, respond: Callable[[], Awaitable[Response]]) -> None:
        try:
            response = await respond()
        except Exception as exc:  # the app's own handler for it, as FastAPI's middleware would pick
            handled_as, handler = _handler_for(self.handlers, exc)
            if handler is None:
                raise
            if handled_as is Exception:  # the 500: Starlette would re-raise it for the server to log
                log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            response = await handler(Request(scope, receive), exc)
        await response(scope, receive, send)


class _Disconnected(Exception):
    """The client closed the connection before its body arrived."""


def _headers(scope) -> dict:
    """The headers the fast path reads, decoded as Starlette does (latin-1); a header sent twice makes the request
    not well formed here (FastAPI decides what it means)."""
    found: dict = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in found:
                return {}
            found[name] = value.decode("latin-1")
    return found


def _admitted(authorize: Authorize, headers: dict) -> Principal | None:
    authorization = headers.get(b"authorization")
    if authorization is None:
        return None
    try:
        return authorize(authorization)
    except ApiError:
        return None


def _parsed(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    # json.loads then validation in Python mode: what FastAPI does with a JSON body, so the same bodies pass
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError):  # json's errors, bad UTF-8 and pydantic's are all ValueErrors
        return None


def _replaying(raw: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()
    return replay


def _handler_for(handlers: dict, exc: Exception) -> tuple[type | None, Callable | None]:
    """The handler Starlette would pick, and the class it is registered for: the first of the exception's MRO."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return cls, handlers[cls]
    return None, None
