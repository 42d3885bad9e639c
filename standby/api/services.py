"""A site's API services: the intake gate's view of the control row, the hold of writes during a freeze, and what
the site hears from the authority. Built by the composition root; the routes (standby.api.app) use them."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from tenacity import AsyncRetrying, retry_if_exception_type, retry_if_result, stop_never, wait_fixed

from standby.api.auth import TokenRegistry
from standby.api.errors import ApiError
from standby.api.hold import HoldQueue, HoldResult
from standby.api.metrics import SiteMetrics
from standby.api.sync import SyncGate
from standby.clearance.commands import Command, Outcome
from standby.domain.states import IntakeState
from standby.intake_gate import HOLD_CODE, RETRY_AFTER_S, Admission, GateDecision, decide
from standby.store.site import SiteControl, read_control

log = logging.getLogger(__name__)

@dataclass
class SiteServices:
    """What the API needs, built by the composition root. `submit` carries out one command via the intake;
    `start`/`stop` run inside the server's event loop.

    `authority`, when given, is called (in a worker thread, every `authority_poll_s`) for the witness's current
    epoch and primary site; a site whose control row is at an older epoch then refuses writes (`stale_epoch`).
    `primary_urls` maps site ids to base URLs, so a refusal can say where writes go now. `default_hold_s` and
    `default_hold_max` bound the hold of a freeze whose row names no bounds (e.g. after a promotion). `sync`, when
    given (synchronous mode), answers a write only once the standby has applied it, while this site is primary."""

    site_id: str
    read_engine: Engine
    submit: Callable[[Command], Awaitable[Outcome]]
    tokens: TokenRegistry
    metrics: SiteMetrics
    max_body_bytes: int = 256 * 1024
    start: Callable[[], Awaitable[None]] = field(default=lambda: _noop())
    stop: Callable[[], Awaitable[None]] = field(default=lambda: _noop())
    control_ttl_s: float = 0.25
    primary_urls: dict[str, str] = field(default_factory=dict)
    authority: Callable[[], tuple[int, str | None]] | None = None
    authority_poll_s: float = 0.2
    hold_poll_s: float = 0.015
    default_hold_s: float = 5.0
    default_hold_max: int = 1000
    sync: SyncGate | None = None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time  # the gate's `now`: the clock the lease keeper stamps lease_until with
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _control: SiteControl | None = None
    _control_at: float = float("-inf")
    _rereading: asyncio.Task | None = None
    _authority_epoch: int | None = None
    _authority_primary: str | None = None
    _holds: HoldQueue | None = None
    _watcher: asyncio.Task | None = None
    _following: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self._holds = HoldQueue(self.clock, on_change=self.metrics.show_held)

    @property
    def held(self) -> int:
        """Write requests held now."""
        return self._holds.held

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

    async def control_or_503(self) -> SiteControl | None:
        """current_control, with a first read that fails answered as 503 site_unavailable rather than a 500."""
        try:
            return await self.current_control()
        except Exception as exc:
            log.warning("site %s: reading the control row failed: %s", self.site_id, exc)
            raise ApiError(503, "site_unavailable", f"site {self.site_id} cannot read its control row: "
                                                    f"{type(exc).__name__}", headers={"Retry-After": "1"}) from None

    async def fresh_control(self) -> SiteControl | None:
        """The control row read now (sharing a re-read already in flight), in a worker thread."""
        self.forget_control()
        if self._rereading is None or self._rereading.done():
            self._rereading = asyncio.create_task(self._reread())
        await asyncio.shield(self._rereading)
        return self._control

    def forget_control(self) -> None:
        """The cached row is known to be old (a worker saw another state): the next read goes to the database."""
        self._control_at = float("-inf")

    def decide(self, control: SiteControl | None) -> GateDecision:
        """The intake gate on `control`, now (wall-clock time, for the lease), and what this site last heard from the
        authority."""
        return decide(self.site_id, control, now=self.wall_clock(), authority_epoch=self._authority_epoch,
                      authority_primary=self._authority_primary)

    async def gate(self) -> GateDecision:
        """The gate for a new write. While others are held it holds too, so writes leave the hold in arrival
        order rather than overtaking it the moment intake opens."""
        decision = self.decide(await self.control_or_503())
        if decision.admission is Admission.REFUSE and time.monotonic() - self._control_at > self.hold_poll_s:
            # a refusal is worth a fresh look (shared by concurrent writes): a promotion or resume may have just
            # committed, and the cached row would turn writes away for up to control_ttl_s
            decision = self.decide(await self.fresh_control())
        if decision.admitted and self._holds.held:
            return GateDecision(Admission.HOLD, HOLD_CODE, f"site {self.site_id} is releasing held writes", 503,
                                decision.primary_site, RETRY_AFTER_S)
        return decision

    def refusal(self, decision: GateDecision) -> ApiError:
        """The 503 for a gate refusal: Retry-After, and the primary's id and URL when another site takes writes."""
        extra = None
        if decision.primary_site and decision.primary_site != self.site_id:
            extra = {"primary_site": decision.primary_site,
                     "primary_url": self.primary_urls.get(decision.primary_site)}
        return ApiError(decision.status, decision.code, decision.message, extra=extra,
                        headers={"Retry-After": str(decision.retry_after_s or RETRY_AFTER_S)})

    async def hold_until_open(self, budget: "HoldBudget") -> GateDecision:
        """Hold one write until intake opens (ADMIT returned) or the site stops being primary (that refusal
        returned). Raises ApiError 503 held_too_long past the freeze's time bound (counted from when this write was
        first held) and hold_full past its count bound."""
        control = self._control
        if control is None or control.intake_state is not IntakeState.FROZEN:
            control = await self.fresh_control()  # the freeze's own bounds, not a row from before it
        hold_s = control.hold_s if control and control.hold_s else self.default_hold_s
        hold_max = control.hold_max if control and control.hold_max else self.default_hold_max
        if budget.first_held is None:
            budget.first_held = self.clock()
            if self._holds.held < hold_max:
                self.metrics.intake_held_total.inc()
        self._ensure_watcher()
        held = await self._holds.hold_detailed(hold_s - (self.clock() - budget.first_held), hold_max)
        budget.held_s += held.waited_s
        if held.result is HoldResult.RELEASED:
            self.metrics.intake_released_total.inc()
            return GateDecision(Admission.ADMIT)
        if held.result is HoldResult.CANCELLED:
            self.metrics.intake_hold_refused_total.labels(held.reason.code).inc()
            return held.reason
        reason = "held_too_long" if held.result is HoldResult.TIMED_OUT else "hold_full"
        self.metrics.intake_hold_refused_total.labels(reason).inc()
        message = (f"site {self.site_id} held this write {hold_s:g} s, the freeze's bound, and intake is still frozen"
                   if reason == "held_too_long" else
                   f"site {self.site_id} already holds {hold_max} writes, the freeze's bound")
        raise ApiError(503, reason, message + "; retry with the same Idempotency-Key",
                       headers={"Retry-After": str(RETRY_AFTER_S)})

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """While writes are held, re-read the row (off the loop) until the gate settles: release them in arrival
        order when it admits, answer them with its refusal when it refuses. The `while` test and the return follow
        each other with no await between, so a write held later always finds a watcher running."""
        while self._holds.held:
            decision = await self._settled()
            if decision is None:
                continue
            if decision.admitted:
                self._holds.release_all()
            else:
                self._holds.cancel_all(decision)

    async def _settled(self) -> GateDecision | None:
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda d: d is not None and d.held) | retry_if_exception_type(Exception),
            wait=wait_fixed(self.hold_poll_s), stop=stop_never, sleep=self.sleep, before_sleep=_log_failed_poll)
        return await retrying(self._poll_held)

    async def _poll_held(self) -> GateDecision | None:
        if not self._holds.held:
            return None
        control = await asyncio.to_thread(read_control, self.read_engine, self.site_id)
        self._keep(control)
        return self.decide(control)

    async def start_background(self) -> None:
        """Ask the authority once (so the first writes already know its epoch), then follow it."""
        if self.authority is not None:
            await self._ask_authority()
            self._following = asyncio.create_task(self._follow_authority())

    async def stop_background(self) -> None:
        """Stop following the authority and answer every held write: the site is going away."""
        for task in (self._following, self._watcher):
            if task is not None:
                task.cancel()
        self._holds.cancel_all(GateDecision(Admission.REFUSE, "intake_unavailable",
                                            f"site {self.site_id} is shutting down; retry", 503, None, RETRY_AFTER_S))

    async def _follow_authority(self) -> None:
        while True:  # a poll, not a retry: a failed ask is logged and the next one comes as usual
            await self.sleep(self.authority_poll_s)
            await self._ask_authority()

    async def _ask_authority(self) -> None:
        try:
            self._authority_epoch, self._authority_primary = await asyncio.to_thread(self.authority)
        except Exception as exc:  # the last answer stands; the next poll tries again
            log.warning("site %s: asking the authority for the epoch failed: %s", self.site_id, exc)


@dataclass
class HoldBudget:
    """One write's hold across rounds (held, released, held again): when first held, and the time held in all."""
    first_held: float | None = None
    held_s: float = 0.0


def _log_failed_poll(retry_state) -> None:
    # every 64th failure: the poll runs every ~15 ms, and a database that is down would flood the log
    if retry_state.outcome is not None and retry_state.outcome.failed and retry_state.attempt_number % 64 == 1:
        log.warning("re-reading the control row for held writes failed (attempt %d): %s",
                    retry_state.attempt_number, retry_state.outcome.exception())


async def _noop() -> None:
    return None
