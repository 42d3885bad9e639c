"""The site's HTTP API. Writes go through the intake (micro-batcher → ClearanceWorker); reads go to the database."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from standby.api import errors
from standby.api.auth import TokenRegistry
from standby.api.errors import ApiError
from standby.api.metrics import SiteMetrics
from standby.api.models import AmendIn, DecisionIn, PaymentIn, PreDeclareIn
from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.clearance.handlers import declaration_view
from standby.domain.errors import DomainError
from standby.domain.numbers import DeclarationNumber
from standby.domain.states import IntakeState, SiteRole
from standby.store import reads
from standby.store.site import SiteControl, read_control

log = logging.getLogger(__name__)
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
OFFICE_CACHE_SIZE = 200_000


@dataclass
class SiteServices:
    """What the API needs, built by the composition root. `submit` carries out one command via the intake;
    `start`/`stop` run inside the server's event loop."""

    site_id: str
    read_engine: Engine
    submit: Callable[[Command], Awaitable[Outcome]]
    tokens: TokenRegistry
    metrics: SiteMetrics
    max_body_bytes: int = 256 * 1024
    start: Callable[[], Awaitable[None]] = field(default=lambda: _noop())
    stop: Callable[[], Awaitable[None]] = field(default=lambda: _noop())
    control_ttl_s: float = 0.25
    _control: SiteControl | None = None
    _control_at: float = float("-inf")
    _rereading: asyncio.Task | None = None

    async def current_control(self) -> SiteControl | None:
        """The site's control row, re-read when older than control_ttl_s, in a worker thread (never on the loop, so
        a slow database does not stall intake). Callers arriving while that read is in flight get the previous
        row, which is safe because the intake worker re-checks the row inside its own transaction; only the very
        first call waits for the read (and sees its error, if any)."""
        if time.monotonic() - self._control_at <= self.control_ttl_s:
            return self._control
        if self._rereading is None or self._rereading.done():
            self._rereading = asyncio.create_task(self._reread())
        if self._control is None:
            await asyncio.shield(self._rereading)
        return self._control

    async def _reread(self) -> None:
        try:
            self._keep(await asyncio.to_thread(read_control, self.read_engine, self.site_id))
        except Exception as exc:
            if self._control is None:
                raise  # the caller waiting for the first read gets the error
            # the previous row stands and the next call after the TTL tries again
            log.warning("site %s: re-reading the control row failed, keeping the previous one: %s", self.site_id, exc)

    def _keep(self, control: SiteControl | None) -> None:
        self._control, self._control_at = control, time.monotonic()
        if control:
            self.metrics.show_control(control.role, control.intake_state, control.epoch)


async def _noop() -> None:
    return None


def create_app(services: SiteServices) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        await services.start()
        yield
        await services.stop()

    app = FastAPI(title=f"Standby clearance — site {services.site_id}", version="1", lifespan=lifespan,
                  description="Customs clearance intake (VNACCS-style IDA/IDC/IDE), officer queues, health, metrics.")
    app.add_exception_handler(ApiError, errors.on_api_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, errors.on_http_error)
    app.state.services = services
    _routes(app, services)
    app.add_middleware(errors.BodyLimit, limit=services.max_body_bytes)
    return app


def _auth(services: SiteServices, *roles: Role):
    async def dependency(authorization: str | None = Header(None)) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        principal = services.tokens.principal(authorization[7:].strip())
        if principal is None:
            raise ApiError(401, "unauthorized", "the bearer token is not known to this site",
                           headers={"WWW-Authenticate": "Bearer"})
        if roles and principal.role not in roles:
            raise ApiError(403, "forbidden", f"this endpoint is for {', '.join(r.value for r in roles)} tokens, "
                                             f"not {principal.role.value}")
        return principal
    return dependency


async def _idempotency_key(idempotency_key: str | None = Header(None)) -> str:
    if idempotency_key is None:
        raise ApiError(400, "idempotency_key_required",
                       "send an Idempotency-Key header so a retried request is answered once, never twice")
    if not KEY_PATTERN.match(idempotency_key):
        raise ApiError(400, "idempotency_key_invalid",
                       "Idempotency-Key must be 1-128 characters of letters, digits and . _ : -")
    return idempotency_key


def _routes(app: FastAPI, s: SiteServices) -> None:
    declarant_or_operator = _auth(s, Role.DECLARANT, Role.OPERATOR)
    officer = _auth(s, Role.OFFICER, Role.OPERATOR)
    anyone = _auth(s)

    async def carry_out(op: Op, principal: Principal, key: str, payload: dict, office: str) -> JSONResponse:
        control = await s.current_control()
        if control is None:
            raise ApiError(503, "site_uninitialised", f"site {s.site_id} has no control row; run standbyctl db upgrade")
        if control.role is not SiteRole.PRIMARY:
            raise ApiError(503, "not_primary", f"site {s.site_id} is a standby and refuses writes; "
                                               f"the primary is site {control.primary_site or 'unknown'}")
        started = time.perf_counter()
        try:
            outcome = await s.submit(Command(op, principal, key, payload, office))
        except Exception as exc:  # worker unavailable, shutting down: the client may retry with the same key
            s.metrics.errors.labels("503", "intake_unavailable").inc()
            raise ApiError(503, "intake_unavailable", f"{exc}", headers={"Retry-After": "1"}) from None
        elapsed = time.perf_counter() - started
        kind = outcome.body.get("kind", payload.get("kind", "")) if outcome.ok else ""
        s.metrics.requests.labels(op.value, kind, "replayed" if outcome.replayed else
                                  ("accepted" if outcome.ok else "refused")).inc()
        s.metrics.request_latency.labels(op.value).observe(elapsed)
        if op is Op.REGISTER and outcome.ok and not outcome.replayed:
            s.metrics.decision_latency.labels(outcome.body["lane"]).observe(elapsed)
            s.metrics.lanes.labels(outcome.body["kind"], outcome.body["lane"], outcome.body["lane_rule"]).inc()
        if not outcome.ok:
            s.metrics.errors.labels(str(outcome.status), outcome.body["error"]["code"]).inc()
        if outcome.ok and "base" in outcome.body:
            offices_by_base[outcome.body["base"]] = outcome.body["office_code"]
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
        return JSONResponse(outcome.body, outcome.status, headers=headers)

    offices_by_base: OrderedDict[str, str] = OrderedDict()  # a declaration's office never changes

    def read_office(base: str) -> str | None:
        with s.read_engine.connect() as conn:
            return reads.office_of_declaration(conn, base)

    async def office_of(number: str) -> str:
        """The partition key of a by-number command; 404 before any worker is bothered if there is no such base.
        A miss reads the database in a thread, so a slow read never stalls the event loop."""
        try:
            parsed = DeclarationNumber.parse(number)
        except DomainError as err:
            raise ApiError(400, err.refusal.code, err.refusal.message, "number") from None
        office = offices_by_base.get(parsed.base)
        if office is None:
            office = await asyncio.to_thread(read_office, parsed.base)
            if office is None:
                raise ApiError(404, "not_found", f"no declaration {number} at site {s.site_id}", "number")
            offices_by_base[parsed.base] = office
            if len(offices_by_base) > OFFICE_CACHE_SIZE:
                offices_by_base.popitem(last=False)
        return office

    @app.post("/v1/declarations", status_code=201, tags=["intake"], summary="Pre-declare (IDA import / EDA export)")
    async def pre_declare(body: PreDeclareIn, principal: Principal = Depends(declarant_or_operator),
                          key: str = Depends(_idempotency_key)):
        return await carry_out(Op.PRE_DECLARE, principal, key, body.model_dump(mode="json"), body.office_code)

    @app.post("/v1/declarations/{number}/registration", tags=["intake"],
              summary="Register (IDC / EDC): the lane is decided and, for yellow and red, an officer assigned")
    async def register(number: str, principal: Principal = Depends(declarant_or_operator),
                       key: str = Depends(_idempotency_key)):
        return await carry_out(Op.REGISTER, principal, key, {"number": number}, await office_of(number))

    @app.post("/v1/declarations/{number}/amendments", tags=["intake"], summary="Amend (IDE / EDE)")
    async def amend(number: str, body: AmendIn, principal: Principal = Depends(declarant_or_operator),
                    key: str = Depends(_idempotency_key)):
        return await carry_out(Op.AMEND, principal, key, {"number": number, **body.model_dump(mode="json")},
                               await office_of(number))

    @app.post("/v1/declarations/{number}/payments", tags=["intake"], summary="Pay the outstanding duty and VAT")
    async def pay(number: str, body: PaymentIn, principal: Principal = Depends(declarant_or_operator),
                  key: str = Depends(_idempotency_key)):
        return await carry_out(Op.PAY, principal, key, {"number": number, **body.model_dump(mode="json")},
                               await office_of(number))

    @app.post("/v1/declarations/{number}/decision", tags=["officers"],
              summary="An officer's document-check or inspection result")
    async def decide(number: str, body: DecisionIn, principal: Principal = Depends(officer),
                     key: str = Depends(_idempotency_key)):
        return await carry_out(Op.DECIDE, principal, key, {"number": number, **body.model_dump(mode="json")},
                               await office_of(number))

    # Reads are plain functions: FastAPI runs them in its threadpool, off the event loop that carries intake.
    @app.get("/v1/declarations/{number}", tags=["reads"], summary="A declaration with its goods lines")
    def get_declaration(number: str, principal: Principal = Depends(anyone)):
        return JSONResponse(_read_declaration(s, number, principal))

    @app.get("/v1/officers/me/queue", tags=["officers"], summary="Declarations waiting for this officer")
    def queue(principal: Principal = Depends(_auth(s, Role.OFFICER)), limit: int = 100):
        limit = max(1, min(limit, 1000))
        with s.read_engine.connect() as conn:
            rows = reads.officer_queue(conn, principal.subject, limit)
        # Bodies are JSON-ready (str and int): JSONResponse skips FastAPI's generic encoder, a cost on every read.
        return JSONResponse({"officer_id": principal.subject, "items": [declaration_view(r) for r in rows]})

    @app.get("/v1/site", tags=["operations"], summary="The site's role, epoch and intake state")
    async def site(_principal: Principal = Depends(anyone)):
        return _control_body(s, await s.current_control())

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz():
        return {"status": "ok", "site": s.site_id}

    @app.get("/readyz", tags=["operations"], summary="Ready for writes: an open primary (503 otherwise)")
    async def readyz():
        body = _control_body(s, await s.current_control())
        ready = body.get("role") == SiteRole.PRIMARY.value and body.get("intake_state") == IntakeState.OPEN.value
        return JSONResponse({**body, "ready": ready}, 200 if ready else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics():
        await s.current_control()
        backlog = await asyncio.to_thread(_change_log_backlog, s)
        if backlog is not None:
            pending, oldest_at = backlog
            s.metrics.show_change_log(pending, max(0.0, time.time() - oldest_at) if oldest_at else 0.0)
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _change_log_backlog(s: SiteServices) -> tuple[int, float | None] | None:
    with s.read_engine.connect() as conn:
        return reads.change_log_backlog(conn)


def _control_body(s: SiteServices, c: SiteControl | None) -> dict:
    if c is None:
        return {"site": s.site_id, "role": None, "intake_state": None, "epoch": None}
    return {"site": c.site_id, "role": c.role.value, "epoch": c.epoch, "intake_state": c.intake_state.value,
            "primary_site": c.primary_site}


def _read_declaration(s: SiteServices, number: str, principal: Principal) -> dict:
    try:
        parsed = DeclarationNumber.parse(number)
    except DomainError as err:
        raise ApiError(400, err.refusal.code, err.refusal.message, "number") from None
    with s.read_engine.connect() as conn:
        row = reads.declaration(conn, parsed.base)
        if row is None:
            raise ApiError(404, "not_found", f"no declaration {number} at site {s.site_id}", "number")
        if principal.role is Role.DECLARANT and row["enterprise_tax_code"] != principal.subject:
            raise ApiError(403, "forbidden", "this declarant token acts for another enterprise")
        if principal.role is Role.OFFICER:
            office = reads.office_of_officer(conn, principal.subject)
            if office != row["office_code"]:
                raise ApiError(403, "forbidden", f"officer {principal.subject} does not belong to office "
                                                 f"{row['office_code']}")
        lines = reads.goods(conn, parsed.base)
    body = declaration_view(row)
    body["goods"] = [{k: (str(v) if k in ("quantity", "unit_price") else v) for k, v in line.items()
                      if k != "declaration_base"} for line in lines]
    return body
