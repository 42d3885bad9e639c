"""The front's ASGI app: one address for clients that forwards every request to the primary the witness names and
holds writes while no primary can take them (DESIGN §3 "The front"). The decisions are in `routing`; this module
carries them out.

Public API:
- `build_front(settings, lookup, *, clock=time.monotonic) -> Starlette`: the app; serve it with uvicorn (lifespan
  "on": the lifespan opens the pooled HTTP client and starts the witness watch). `app.state.front` is the `Front`.
- `lookup()` returns the witness's current `WitnessState` (e.g. `open_witness(url).state`); it is called in a
  thread of its own every `settings.front.witness_poll_ms`, never on the event loop.

What is forwarded: method, path and query as received (still encoded), the body byte for byte, every header but
the hop-by-hop ones (so Authorization and Idempotency-Key pass), plus X-Forwarded-For/-Host/-Proto; back come the
site's status, body and headers (Idempotent-Replayed, Retry-After, ...) with X-Standby-Site naming the site that
answered and `Server-Timing: front-upstream;dur=<ms>`, the site's round trip as the front saw it. The front answers
/healthz, /readyz and /metrics itself. It keeps no state but caches (the last witness state, pooled keep-alive
connections), so several fronts can run behind an ordinary load balancer.

Holding (the rules are `routing`'s): a write that cannot go now (no primary named, a "not now / not me" 503, a broken
connection) is parked in a `standby.api.hold.HoldQueue`, the site's own primitive, bounded in count by
`front.hold_max_requests` (counting writes being sent again too) and in time by `front.hold_max_s` from arrival. A
write arriving while others are held queues behind them. Held writes are released together, in the order they were
held, when the witness names a new primary, when a held write is answered, or when the primary's /readyz says it
takes writes; each is then sent again with the same headers and body.

Reads are never held. A read that no primary answers (none named, or the one named unreachable: a failover's gap)
goes to the first other site that answers it, a standby serving what it has applied, and comes back marked
`X-Read-From: standby` (counted in front_standby_reads_total); only when no site answers is it refused.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tenacity import AsyncRetrying, retry_if_result
from yarl import URL

from cutover.front import routing
from cutover.front.metrics import FrontMetrics
from cutover.front.routing import Action, Decision, Primary, Refusal
from cutover.front.watch import PrimaryWatch
from cutover.witness.contract import WitnessState
from standby.api.errors import BodyLimit
from standby.api.hold import HoldQueue, HoldResult
from standby.settings import FrontSettings, Settings
from standby.api.serving import KEEP_ALIVE_S

log = logging.getLogger(__name__)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "expect"})
# uvicorn writes its own Date and Server; a second copy from the site would be sent twice.
DROP_FROM_ANSWER = HOP_BY_HOP | {"date", "server"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Held writes wait, each in one place in the hold, until they are released together in the order they were held: when
# the witness names a new primary, when a held write is answered, or when the prober finds the primary ready. The
# prober asks the primary's /readyz (not a held write: a write that asked again would lose its place in the line),
# from PROBE_FIRST_S apart backing off to PROBE_MAX_S, so a primary that cannot take writes yet sees ~1/PROBE_MAX_S
# cheap reads a second however many writes are held. The backoff starts again only once a held write was answered,
# so a site that says it is ready but refuses writes is not asked in a tight loop.
PROBE_FIRST_S, PROBE_MAX_S = 0.01, 0.1
READY_TIMEOUT_S = 1.0
# Below the sites' keep-alive timeout (standby.api.serving.KEEP_ALIVE_S): the front lets an idle connection go
# before the site does, so it never sends a request down a connection the site is closing (a needless "connection
# lost"; forwarding again is safe, but costs a hop).
KEEPALIVE_S = KEEP_ALIVE_S - 15
CONNECT_TIMEOUT_S = 2.0  # a site that does not accept a connection in this long is treated as down


@dataclass(frozen=True)
class Outgoing:
    """One client request as the front sends it, the same on every attempt."""

    method: str
    target: str  # path and query, still percent-encoded as received
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    raw_headers: tuple
    body: bytes
    content_type: str | None
    seconds: float
    site: str


LOST, TIMED_OUT = "lost", "timed_out"  # a forward that got no answer: connection broken, or forward_timeout_s passed


@dataclass
class _Ticket:
    """What the front remembers of one write while it handles it (never beyond the request)."""

    arrived: float
    generation: int = 0  # the witness change count when the last attempt started
    holding: bool = False
    held_since: float = 0.0
    go: bool = False  # the last pause ended so that this write should be sent again (see Front._park)
    reason: str | None = None
    tries: int = 0
    upstream_s: float = 0.0
    parked_s: float = 0.0


@dataclass
class Front:
    """Forwards and holds; see the module docstring. Build it with `build_front`."""

    settings: FrontSettings
    site_urls: Mapping[str, str]
    lookup: Callable[[], WitnessState]
    clock: Callable[[], float] = time.monotonic
    metrics: FrontMetrics = field(default_factory=FrontMetrics)

    def __post_init__(self):
        self.watch = PrimaryWatch(self.lookup, self.settings.witness_poll_ms / 1000, self._changed_in_thread,
                                  self.metrics.witness_errors.inc)
        self.queue = HoldQueue(self.clock)
        self.holding = 0  # writes in holding now: parked, or being sent again
        self.generation = 0
        self._prober: asyncio.Task | None = None  # runs while writes are held (see PROBE_MAX_S)
        self._probes = 0  # probes since a held write was last answered: the prober's backoff
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=self.settings.forward_timeout_s, sock_connect=CONNECT_TIMEOUT_S),
            cookie_jar=aiohttp.DummyCookieJar(),  # stateless: one client's cookies never reach another's request
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))
        await asyncio.to_thread(self.watch.poll)  # know the primary before the first request, off the loop
        self.watch.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.watch.stop)
        self.queue.cancel_all("stopping")
        if self._prober is not None:
            self._prober.cancel()
        if self._session is not None:
            await self._session.close()

    @property
    def primary(self) -> Primary | None:
        return routing.primary_of(self.watch.state, self.site_urls)

    def _changed_in_thread(self, state: WitnessState) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._changed, state)

    def _changed(self, state: WitnessState) -> None:
        """The witness names a new primary or epoch: every held write goes, in arrival order."""
        self.generation += 1
        self.metrics.show_primary(state.epoch, state.primary_site, list(self.site_urls))
        log.info("front: the witness names %s primary at epoch %d", state.primary_site or "no site", state.epoch)
        self.queue.release_all()

    # --- handling ----------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        arrived = self.clock()
        out = Outgoing(request.method, _target(request.scope), _forward_headers(request), await request.body())
        if routing.is_write(out.method):
            ticket = _Ticket(arrived)
            try:
                response = await self._write(out, ticket)
            finally:
                if ticket.holding:
                    self.holding -= 1
                    self.metrics.held.set(self.holding)
            self._observe_overhead(arrived, ticket.upstream_s + ticket.parked_s)
            return response
        return await self._read(out, arrived)

    async def _read(self, out: Outgoing, arrived: float) -> Response:
        decision = routing.route(out.method, self.primary)
        retried = False
        while decision.action is Action.FORWARD:
            primary = decision.primary or self.primary
            if primary is None:
                return self._refuse(routing.no_primary())
            answer = await self._forward(primary, out)
            if answer is TIMED_OUT:
                return self._refuse(routing.forward_timeout(primary, self.settings.forward_timeout_s))
            if answer is not LOST:
                self._observe_overhead(arrived, answer.seconds)
                return self._deliver(answer, out.method)
            decision = routing.judge_connection_error(out.method, primary, retried)
            retried = True
            await asyncio.to_thread(self.watch.poll)  # the read goes at once to whoever the witness names now
            if decision.action is Action.FORWARD:
                decision = Decision(Action.FORWARD, self.primary)
        if decision.refusal is not None and decision.refusal.code in routing.READ_ELSEWHERE_CODES:
            answer = await self._read_elsewhere(out, decision.refusal.primary_site)
            if answer is not None:
                self._observe_overhead(arrived, answer.seconds)
                self.metrics.standby_reads.inc()
                response = self._deliver(answer, out.method)
                response.raw_headers += [(b"x-read-from", b"standby")]
                return response
        return self._refuse(decision.refusal)

    async def _read_elsewhere(self, out: Outgoing, unreachable: str | None) -> Answer | None:
        """No primary answers a read (a failover's gap): the first other site that answers it does. A standby serves
        reads from what it has applied, a moment behind the primary at most; `X-Read-From: standby` says so. None
        when no site answers (the caller refuses the read as before)."""
        epoch = self.watch.state.epoch if self.watch.state else 0
        for site, url in self.site_urls.items():
            if site == unreachable:
                continue
            answer = await self._forward(routing.Primary(site, url, epoch), out)
            if isinstance(answer, Answer) and answer.status < 500:
                return answer
        return None

    async def _write(self, out: Outgoing, ticket: _Ticket) -> Response:
        response = await self._try_write(out, ticket)  # the common case, without building a retry loop
        if response is not None:
            return response
        await self._park(ticket)
        retrying = AsyncRetrying(  # each pause lasts until a release or the write's bound (see _park)
            stop=lambda _rs: routing.hold_left(self.clock(), ticket.arrived, self.settings.hold_max_s) <= 0,
            sleep=lambda _seconds: self._park(ticket),
            retry=retry_if_result(lambda response: response is None),
            retry_error_callback=lambda _rs: None)
        response = await retrying(self._try_write, out, ticket)
        if response is None:
            return self._refuse(routing.held_too_long(self.settings.hold_max_s, ticket.reason))
        return response

    async def _try_write(self, out: Outgoing, ticket: _Ticket) -> Response | None:
        """One attempt: the response to send, or None while the write stays held."""
        if ticket.holding and not ticket.go:
            return None  # the pause ended at the write's bound, not by a release: nothing to send
        ticket.generation, ticket.tries, ticket.go = self.generation, ticket.tries + 1, False
        primary = self.primary
        if ticket.tries == 1 and self.queue.held:
            decision = Decision(Action.HOLD, reason="behind_held")  # a write never overtakes earlier held ones
        elif primary is None:
            decision = routing.route(out.method, None)
        else:
            answer = await self._forward(primary, out)
            if answer is TIMED_OUT:
                return self._refuse(routing.forward_timeout(primary, self.settings.forward_timeout_s))
            if answer is LOST:
                decision = routing.judge_connection_error(out.method, primary, read_retried=False)
            else:
                ticket.upstream_s += answer.seconds
                decision = routing.judge_answer(out.method, answer.status,
                                                routing.error_code(answer.body, answer.content_type))
                if decision.action is Action.DELIVER:
                    return self._delivered_write(answer, out.method, ticket)
        return self._hold(decision, ticket)

    def _hold(self, decision: Decision, ticket: _Ticket) -> Response | None:
        ticket.reason = decision.reason
        if decision.repoll:
            self.watch.poke()
        if ticket.holding:
            return None
        refusal = routing.admit_hold(self.holding, self.settings.hold_max_requests)
        if refusal is not None:
            return self._refuse(refusal)
        ticket.holding, ticket.held_since = True, self.clock()
        self.holding += 1
        self.metrics.held.set(self.holding)
        self.metrics.held_total.inc()
        return None

    async def _park(self, ticket: _Ticket) -> None:
        """The pause between attempts of a held write: in the hold, until a release (the witness names a new primary,
        a held write is answered, or the prober finds the primary ready) or the write's bound. Sets `ticket.go` when
        the write should be sent again."""
        if self.generation != ticket.generation:
            ticket.go = True  # the witness moved while the last attempt was under way: go at once
            return
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_while_held())
        left = routing.hold_left(self.clock(), ticket.arrived, self.settings.hold_max_s)
        held = await self.queue.hold_detailed(left, sys.maxsize)  # the count bound is admit_hold's
        ticket.parked_s += held.waited_s
        if held.result is HoldResult.CANCELLED:
            raise asyncio.CancelledError("the front is stopping")
        ticket.go = held.result is HoldResult.RELEASED or self.generation != ticket.generation

    async def _probe_while_held(self) -> None:
        """While writes are held: ask the primary the witness names whether it takes writes, and release them all
        when it does. Ends when nothing is held."""
        await asyncio.sleep(self._probe_pause())
        retrying = AsyncRetrying(wait=lambda _rs: self._probe_pause(), stop=lambda _rs: not self.queue.held,
                                 retry=retry_if_result(lambda _released: True), retry_error_callback=lambda _rs: None)
        await retrying(self._probe_once)

    def _probe_pause(self) -> float:
        self._probes += 1
        return min(PROBE_MAX_S, PROBE_FIRST_S * 2 ** min(self._probes - 1, 16))

    async def _probe_once(self) -> bool:
        primary = self.primary
        if primary is None or not self.queue.held:
            return False
        try:
            async with self._session.get(f"{primary.url}/readyz", timeout=aiohttp.ClientTimeout(
                    total=READY_TIMEOUT_S)) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False
        if not routing.ready_for_writes(body, primary):
            return False
        self.queue.release_all()
        return True

    def _delivered_write(self, answer: Answer, method: str, ticket: _Ticket) -> Response:
        if ticket.holding:
            self.metrics.released_total.inc()
            self.metrics.hold_seconds.observe(self.clock() - ticket.held_since)
            self._probes = 0  # the primary takes writes: the next hold probes quickly again
            self.queue.release_all()  # the rest go now, in the order they were held
        return self._deliver(answer, method)

    # --- I/O ---------------------------------------------------------------------------------------------------

    async def _forward(self, primary: Primary, out: Outgoing) -> Answer | str:
        """One forward: the site's answer, LOST when the connection failed or broke, TIMED_OUT past the timeout."""
        started = time.perf_counter()
        try:
            async with self._session.request(out.method, URL(primary.url + out.target, encoded=True),
                                             headers=out.headers, data=out.body or None,
                                             allow_redirects=False) as resp:
                body = await resp.read()
                seconds = time.perf_counter() - started
                self.metrics.upstream_latency.observe(seconds)
                return Answer(resp.status, resp.raw_headers, body, resp.headers.get("Content-Type"), seconds,
                              primary.site)
        except aiohttp.ConnectionTimeoutError:
            return LOST  # the site did not take the connection: down, as far as the client is concerned
        except asyncio.TimeoutError:
            return TIMED_OUT
        except aiohttp.ClientError as exc:
            log.info("front: forward to site %s failed: %s", primary.site, type(exc).__name__)
            return LOST

    def _deliver(self, answer: Answer, method: str) -> Response:
        response = Response(answer.body, answer.status)
        kept = [(k, v) for k, v in answer.raw_headers if k.decode("latin-1").lower() not in DROP_FROM_ANSWER]
        if method == "HEAD":
            kept += [(k, v) for k, v in answer.raw_headers if k.lower() == b"content-length"]
            response.raw_headers = kept
        else:
            response.raw_headers = [(b"content-length", str(len(answer.body)).encode())] + kept
        response.raw_headers += [(b"x-standby-site", answer.site.encode()),
                                 # the site's round trip as the front saw it: a client can subtract it from its own
                                 # latency to get the extra hop, request by request (standbyctl bench front does)
                                 (b"server-timing", f"front-upstream;dur={answer.seconds * 1000:.3f}".encode())]
        self.metrics.forwarded.labels(routing.status_class(answer.status)).inc()
        return response

    def _refuse(self, refusal: Refusal) -> Response:
        self.metrics.refused.labels(refusal.code).inc()
        return JSONResponse(refusal.envelope(), refusal.status, headers=refusal.headers())

    def _observe_overhead(self, arrived: float, elsewhere_s: float) -> None:
        self.metrics.forward_latency.observe(max(0.0, self.clock() - arrived - elsewhere_s))

    # --- the front's own endpoints -----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        state, primary = self.watch.state, self.primary
        body = {"ready": primary is not None, "primary_site": primary.site if primary else None,
                "epoch": state.epoch if state else None, "held": self.holding,
                "witness_answering": self.watch.lookups > 0 and not self.watch.failing}
        return primary is not None, body


def _target(scope: dict) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _forward_headers(request: Request) -> list[tuple[str, str]]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]
               if k.decode("latin-1").lower() not in HOP_BY_HOP]
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers = [(k, v) for k, v in headers if k.lower() not in ("x-forwarded-for", "x-forwarded-host",
                                                                 "x-forwarded-proto")]
    headers.append(("X-Forwarded-For", f"{prior}, {client}" if prior else client))
    headers.append(("X-Forwarded-Host", request.headers.get("host", "")))
    headers.append(("X-Forwarded-Proto", request.url.scheme))
    return headers


def site_urls(settings: Settings) -> dict[str, str]:
    """Each site's base URL from the settings (sites[id].http.host/port)."""
    return {site_id: f"http://{s.http.host}:{s.http.port}" for site_id, s in settings.sites.items()}


def build_front(settings: Settings, lookup: Callable[[], WitnessState], *,
                clock: Callable[[], float] = time.monotonic) -> Starlette:
    """The front's app for these settings (front section, site addresses, body limit) and this witness lookup."""
    front = Front(settings.front, site_urls(settings), lookup, clock=clock)

    @asynccontextmanager
    async def lifespan(_app):
        await front.start()
        yield
        await front.stop()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "front": True})

    async def readyz(_request: Request) -> Response:
        ready, body = front.readiness()
        return JSONResponse(body, 200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(front.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
                            Route("/{path:path}", front.handle, methods=METHODS)], lifespan=lifespan)
    app.state.front = front
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    return app
