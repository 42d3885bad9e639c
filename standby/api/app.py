"""The site's HTTP API. Writes go through the intake (micro-batcher → ClearanceWorker); reads go to the database.
The services the routes use (the gate's view of the control row, the hold, the authority) are in standby.api.services.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, Query, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from standby.api import errors
from standby.api.contract import (BEARER, Health, IdempotencyKey, Number, Readiness, SiteState, answers,
                                  published)
from standby.api.errors import ApiError
from standby.api.fast_path import FastPath, HotRoutes, HotWrite
from standby.api.models import AmendIn, DecisionIn, PaymentIn, PreDeclareIn
from standby.api.org_reads import UnitNames, add_org_routes, declaration_body
from standby.api.services import HoldBudget, SiteServices
from standby.api.sync import acknowledged
from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.clearance.handlers import declaration_view
from standby.clearance.pipeline import is_gate_refusal, is_hold
from standby.domain.errors import DomainError
from standby.domain.numbers import DeclarationNumber
from standby.domain.states import SiteRole
from standby.intake_gate import HOLD_CODE, RETRY_AFTER_S, Admission, GateDecision
from standby.store import reads
from standby.store.site import SiteControl

__all__ = ["SiteServices", "create_app"]  # SiteServices is imported from here by the composition root and tests

OFFICE_CACHE_SIZE = 200_000


def create_app(services: SiteServices) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        await services.start()
        await services.start_background()
        yield
        await services.stop_background()
        await services.stop()

    app = FastAPI(title=f"Standby clearance — site {services.site_id}", version="1", lifespan=lifespan,
                  description="Customs clearance intake (VNACCS-style IDA/IDC/IDE), officer queues, health, metrics.")
    app.add_exception_handler(ApiError, errors.on_api_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, errors.on_http_error)
    for unavailable in (OperationalError, PoolTimeout):
        app.add_exception_handler(unavailable, errors.on_store_unavailable)
    app.add_exception_handler(Exception, errors.on_unexpected)
    app.openapi = lambda: published(app)
    app.state.services = services
    app.state.hot_routes = _routes(app, services)
    app.add_middleware(errors.BodyLimit, limit=services.max_body_bytes)
    # outermost, so a request it answers skips the whole stack; one it passes on meets the body limit as before
    app.add_middleware(FastPath, routes=app.state.hot_routes, limit=services.max_body_bytes,
                       handlers=app.exception_handlers)
    return app


def _authorizer(services: SiteServices, *roles: Role):
    """The caller's principal from the Authorization header's value, for a route open to `roles` (any, if none);
    raises ApiError 401 or 403."""
    def authorize(authorization: str | None) -> Principal:
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
    return authorize


def _auth(authorize):
    # The bearer scheme is declared for the document (BEARER); the header is read here, so the refusals are ours.
    async def dependency(authorization: str | None = Header(None, include_in_schema=False),
                         _scheme: object = Security(BEARER)) -> Principal:
        return authorize(authorization)
    return dependency


async def _idempotency_key(idempotency_key: IdempotencyKey) -> str:
    """The header as published (required, KEY_PATTERN); one that is not is refused by errors.on_validation_error
    with contract.parameter_refusal (400 idempotency_key_required / idempotency_key_invalid)."""
    return idempotency_key


def _routes(app: FastAPI, s: SiteServices) -> HotRoutes:
    """Adds the routes to `app`; returns the hot ones' functions for the fast path, which the endpoints call too."""
    may_declare, may_decide, may_read = (_authorizer(s, Role.DECLARANT, Role.OPERATOR),
                                         _authorizer(s, Role.OFFICER, Role.OPERATOR), _authorizer(s))
    declarant_or_operator, officer, anyone = _auth(may_declare), _auth(may_decide), _auth(may_read)
    names = UnitNames()

    async def carry_out(op: Op, principal: Principal, key: str, payload: dict, office: str) -> JSONResponse:
        started = time.perf_counter()
        command = Command(op, principal, key, payload, office)
        outcome = await acknowledged(s.sync, lambda: _through_gate(s, command),
                                     primary=lambda: s._control is not None and s._control.role is SiteRole.PRIMARY)
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

    async def pre_declare_(principal: Principal, key: str, body: PreDeclareIn, _number: None) -> JSONResponse:
        return await carry_out(Op.PRE_DECLARE, principal, key, body.model_dump(mode="json"), body.office_code)

    async def register_(principal: Principal, key: str, _body: None, number: str) -> JSONResponse:
        return await carry_out(Op.REGISTER, principal, key, {"number": number}, await office_of(number))

    def by_number(op: Op):
        async def carry(principal: Principal, key: str, body, number: str) -> JSONResponse:
            return await carry_out(op, principal, key, {"number": number, **body.model_dump(mode="json")},
                                   await office_of(number))
        return carry
    amend_, pay_, decide_ = by_number(Op.AMEND), by_number(Op.PAY), by_number(Op.DECIDE)

    def read_(number: str, principal: Principal) -> JSONResponse:
        return JSONResponse(declaration_body(s.read_engine, s.site_id, number, principal, names))

    @app.post("/v1/declarations", status_code=201, tags=["intake"], summary="Pre-declare (IDA import / EDA export)",
              responses=answers("pre_declare"))
    async def pre_declare(body: PreDeclareIn, principal: Principal = Depends(declarant_or_operator),
                          key: str = Depends(_idempotency_key)):
        return await pre_declare_(principal, key, body, None)

    @app.post("/v1/declarations/{number}/registration", tags=["intake"], responses=answers("register"),
              summary="Register (IDC / EDC): the lane is decided and, for yellow and red, an officer assigned")
    async def register(number: Number, principal: Principal = Depends(declarant_or_operator),
                       key: str = Depends(_idempotency_key)):
        return await register_(principal, key, None, number)

    @app.post("/v1/declarations/{number}/amendments", tags=["intake"], summary="Amend (IDE / EDE)",
              responses=answers("amend"))
    async def amend(number: Number, body: AmendIn, principal: Principal = Depends(declarant_or_operator),
                    key: str = Depends(_idempotency_key)):
        return await amend_(principal, key, body, number)

    @app.post("/v1/declarations/{number}/payments", tags=["intake"], summary="Pay the outstanding duty and VAT",
              responses=answers("pay"))
    async def pay(number: Number, body: PaymentIn, principal: Principal = Depends(declarant_or_operator),
                  key: str = Depends(_idempotency_key)):
        return await pay_(principal, key, body, number)

    @app.post("/v1/declarations/{number}/decision", tags=["officers"], responses=answers("decide"),
              summary="An officer's document-check or inspection result")
    async def decide(number: Number, body: DecisionIn, principal: Principal = Depends(officer),
                     key: str = Depends(_idempotency_key)):
        return await decide_(principal, key, body, number)

    # Reads are plain functions: FastAPI runs them in its threadpool, off the event loop that carries intake.
    @app.get("/v1/declarations/{number}", tags=["reads"], summary="A declaration with its goods lines",
             responses=answers("get_declaration"))
    def get_declaration(number: Number, principal: Principal = Depends(anyone)):
        return read_(number, principal)

    add_org_routes(app, s.read_engine, s.site_id, names, anyone, officer)

    @app.get("/v1/officers/me/queue", tags=["officers"], summary="Declarations waiting for this officer",
             responses=answers("queue"))
    def queue(principal: Principal = Depends(_auth(_authorizer(s, Role.OFFICER))),
              limit: int = Query(100, description="at most this many; taken as 1-1000")):
        limit = max(1, min(limit, 1000))
        with s.read_engine.connect() as conn:
            rows = reads.officer_queue(conn, principal.subject, limit)
        # Bodies are JSON-ready (str and int): JSONResponse skips FastAPI's generic encoder, a cost on every read.
        return JSONResponse({"officer_id": principal.subject, "items": [declaration_view(r) for r in rows]})

    @app.get("/v1/site", tags=["operations"], summary="The site's role, epoch and intake state",
             response_model=None, responses={200: {"model": SiteState}, **answers("site")})
    async def site(_principal: Principal = Depends(anyone)):
        return JSONResponse(_control_body(s, await s.control_or_503()))

    @app.get("/healthz", tags=["operations"], summary="The process is up", response_model=None,
             responses={200: {"model": Health}, **answers("healthz")})
    async def healthz():
        return {"status": "ok", "site": s.site_id}

    @app.get("/readyz", tags=["operations"], summary="Ready for writes: the intake gate admits (503 otherwise)",
             response_model=None, responses={200: {"model": Readiness}, **answers("readyz")})
    async def readyz():
        control = await s.control_or_503()
        decision = s.decide(control)
        if not decision.admitted:  # during a cutover the front probes here to release held writes: answer from now
            control = await s.fresh_control()
            decision = s.decide(control)
        body = {**_control_body(s, control), "ready": decision.admitted}
        if not decision.admitted:
            body["code"] = decision.code
        return JSONResponse(body, 200 if decision.admitted else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics():
        await s.current_control()
        backlog = await asyncio.to_thread(_change_log_backlog, s)
        if backlog is not None:
            pending, oldest_at = backlog
            s.metrics.show_change_log(pending, max(0.0, time.time() - oldest_at) if oldest_at else 0.0)
        return Response(s.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return HotRoutes(writes={"declarations": HotWrite(may_declare, PreDeclareIn, pre_declare_),
                             "registration": HotWrite(may_declare, None, register_),
                             "amendments": HotWrite(may_declare, AmendIn, amend_),
                             "payments": HotWrite(may_declare, PaymentIn, pay_),
                             "decision": HotWrite(may_decide, DecisionIn, decide_)},
                     read_authorize=may_read, read=read_)


async def _through_gate(s: SiteServices, command: Command) -> Outcome:
    """Carry a write through the intake gate: admitted → submitted; held → held until intake opens, then
    submitted; refused → ApiError 503. A worker that meets FROZEN in its transaction answers with the gate's HOLD
    and wrote nothing, so the same command (same idempotency key) is held and submitted again."""
    budget = HoldBudget()
    decision = await s.gate()
    try:
        while True:
            if decision.held:
                decision = await s.hold_until_open(budget)
            if not decision.admitted:
                raise s.refusal(decision)
            outcome = await _submit(s, command)
            if is_hold(outcome):
                s.forget_control()
                decision = GateDecision(Admission.HOLD, HOLD_CODE, outcome.body["error"]["message"], 503, None,
                                        RETRY_AFTER_S)
            elif is_gate_refusal(outcome):
                # the worker's row said another site takes writes: answer as the gate does, naming it
                fresh = s.decide(await s.fresh_control())
                if fresh.admitted:
                    return outcome
                decision = fresh
            else:
                return outcome
    finally:
        if budget.first_held is not None:
            s.metrics.intake_hold_seconds.observe(budget.held_s)


async def _submit(s: SiteServices, command: Command) -> Outcome:
    try:
        return await s.submit(command)
    except Exception as exc:  # worker unavailable, shutting down: the client may retry with the same key
        s.metrics.errors.labels("503", "intake_unavailable").inc()
        raise ApiError(503, "intake_unavailable", f"{exc}", headers={"Retry-After": "1"}) from None


def _change_log_backlog(s: SiteServices) -> tuple[int, float | None] | None:
    with s.read_engine.connect() as conn:
        return reads.change_log_backlog(conn)


def _control_body(s: SiteServices, c: SiteControl | None) -> dict:
    if c is None:
        return {"site": s.site_id, "role": None, "intake_state": None, "epoch": None}
    return {"site": c.site_id, "role": c.role.value, "epoch": c.epoch, "intake_state": c.intake_state.value,
            "primary_site": c.primary_site}
