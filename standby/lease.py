"""The primary's lease keeper: renew the lease in the witness, write the self-fencing deadline, fence on a new epoch.

Runs in every site's serve process when a witness is configured (wired by the composition root, which injects
`renew`: `standby` knows nothing of the witness). While the site's control row says PRIMARY (not fenced) the keeper
renews every `lease.renew_interval_s`; after a renewal that started at t succeeded, the witness holds the lease until
t + ttl_s and the keeper writes `site_control.lease_until` = t + self_fence_after_s (= t + ttl_s - fence_margin_s).
The intake gate refuses writes from that deadline on (`lease_expired`), so a primary cut off from the witness stops
writing before the witness's lease expires and anyone may be promoted (see cutover.witness.lease.lease_expired).
A renewal the witness refuses because another site was promoted under a newer epoch fences the site's own row.

The deadline is always derived from the time the renewal *started*, so a slow or hung witness call can only make
it earlier than the witness's own expiry, never later. One renewal call is in flight at a time (a call that hangs
past `retry_timeout_s` counts as failed and the next attempt waits for it instead of starting another), so the
witness sees renewals in the order they started and never shortens a lease a later deadline relies on.

A standby never renews (its row is not PRIMARY); a promoted site starts without a lease (store.site.promote clears
lease_until) and its keeper renews at its next poll (`poll_s`, 50 ms by default): until then the gate applies no
lease discipline to it. Pure decisions (`due`, `after_renewal`) are separate from the loop (`LeaseKeeper`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_none

from standby.domain.errors import DomainError
from standby.domain.states import IntakeState, SiteRole
from standby.settings import LeaseSettings
from standby.store import site as store_site
from standby.store.site import SiteControl

log = logging.getLogger(__name__)


class RenewalOutcome(str, Enum):
    RENEWED = "renewed"  # the witness extended the lease: it names this site primary under the epoch renewed
    SUPERSEDED = "superseded"  # the witness names another epoch (and primary): this site was replaced
    UNAVAILABLE = "unavailable"  # no answer (unreachable, hung past retry_timeout_s, failed)


@dataclass(frozen=True)
class Renewal:
    """What one renewal call answered. For SUPERSEDED, `epoch` and `primary` are the witness's current ones."""

    outcome: RenewalOutcome
    epoch: int | None = None
    primary: str | None = None
    reason: str = ""


# (site_id, epoch, ttl_s, now) -> Renewal: renew the lease of site_id under epoch for ttl_s from now. Injected by
# the composition root around the witness's renew_lease. It may raise (counted as UNAVAILABLE) or hang (the keeper
# stops waiting after retry_timeout_s).
Renew = Callable[[str, int, float, float], Renewal]


class LeaseMove(str, Enum):
    NOTHING = "nothing"
    RENEW = "renew"
    WRITE_DEADLINE = "write_deadline"
    FENCE = "fence"


@dataclass(frozen=True)
class LeaseStep:
    """What the keeper does next: RENEW under `epoch`; WRITE_DEADLINE `until` for `epoch`; FENCE because the
    witness is at `epoch` with `primary`; NOTHING (`reason` says why)."""

    move: LeaseMove
    epoch: int | None = None
    until: float | None = None
    primary: str | None = None
    reason: str = ""


def keeps_lease(control: SiteControl | None) -> bool:
    """Whether a site with this control row keeps a lease: a primary that is not fenced (frozen counts)."""
    return control is not None and control.role is SiteRole.PRIMARY and control.intake_state is not IntakeState.FENCED


def due(control: SiteControl | None, last_started: float | None, now: float, lease: LeaseSettings) -> LeaseStep:
    """Whether to renew now: a primary renews when it holds no deadline yet (just promoted, or this process never
    renewed) or `renew_interval_s` after its last attempt started. Anything else: NOTHING."""
    if not keeps_lease(control):
        return LeaseStep(LeaseMove.NOTHING, reason="not a primary: a standby keeps no lease")
    if control.lease_until is None or last_started is None or now - last_started >= lease.renew_interval_s:
        return LeaseStep(LeaseMove.RENEW, epoch=control.epoch)
    return LeaseStep(LeaseMove.NOTHING, reason="renewed less than renew_interval_s ago")


def after_renewal(site_id: str, control: SiteControl | None, epoch: int, started_at: float, renewal: Renewal,
                  lease: LeaseSettings) -> LeaseStep:
    """What a renewal under `epoch` that started at `started_at` leads to, given the control row now.

    RENEWED and the row still PRIMARY at `epoch`, not fenced → WRITE_DEADLINE started_at + self_fence_after_s.
    SUPERSEDED by a newer epoch naming another site → FENCE (that epoch and primary). No answer for a primary that
    has no deadline yet → WRITE_DEADLINE started_at (it refuses writes until a renewal succeeds: a primary never
    writes without a lease it once got). Anything else → NOTHING: no answer (the deadline already written stands,
    and the gate refuses writes once it passes), a row that moved on
    meanwhile, or a witness naming this very site under a newer epoch (a promotion of it under way; the row
    follows through the runbook)."""
    if not keeps_lease(control) or control.epoch != epoch:
        return LeaseStep(LeaseMove.NOTHING, reason=f"the row moved on from primary at epoch {epoch}")
    if renewal.outcome is RenewalOutcome.RENEWED:
        return LeaseStep(LeaseMove.WRITE_DEADLINE, epoch=epoch, until=started_at + lease.self_fence_after_s)
    if renewal.outcome is RenewalOutcome.SUPERSEDED:
        newer = renewal.epoch is not None and renewal.epoch > epoch
        if newer and renewal.primary not in (None, site_id):
            return LeaseStep(LeaseMove.FENCE, epoch=renewal.epoch, primary=renewal.primary, reason=renewal.reason)
        return LeaseStep(LeaseMove.NOTHING, reason=f"the witness refused the renewal but names "
                                                   f"{renewal.primary or 'no site'} at epoch {renewal.epoch}: "
                                                   f"{renewal.reason}")
    if control.lease_until is None:
        # No deadline yet (just promoted, or serving for the first time) and no lease to be had: without this the
        # row would admit writes with no deadline at all for as long as the witness stays out of reach.
        return LeaseStep(LeaseMove.WRITE_DEADLINE, epoch=epoch, until=started_at,
                         reason=f"no lease yet and none granted: {renewal.reason or 'the witness did not answer'}")
    return LeaseStep(LeaseMove.NOTHING, reason=renewal.reason or "the witness did not answer")


class LeaseMetrics:
    """Where the keeper reports (standby.api.metrics.SiteMetrics has these); a no-op by default."""

    def show_lease(self, remaining_s: float | None) -> None: ...

    def lease_renewal_failed(self, reason: str) -> None: ...


class LeaseKeeper:
    """The loop: every `poll_s` read the control row, renew when `due`, act on `after_renewal`. `start` runs it in a
    daemon thread; `tick` is one round (tests drive it directly). `clock` is wall-clock time (the witness and the
    intake gate compare deadlines with it); `sleep` waits between rounds (default: until `stop`). `engine` writes
    (a writer engine), `read_engine` reads the row every round (default: `engine`)."""

    FAILURE_LOG_EVERY = 20  # a witness down for long logs its first failure and every 20th after it

    def __init__(self, site_id: str, engine: Engine, renew: Renew, lease: LeaseSettings, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None,
                 poll_s: float = 0.05, metrics: LeaseMetrics | None = None, read_engine: Engine | None = None):
        self.site_id, self.engine, self.renew, self.lease = site_id, engine, renew, lease
        self.read_engine = read_engine or engine  # the row is read every poll_s: not on a writer's BEGIN IMMEDIATE
        self.clock, self.poll_s, self.metrics = clock, poll_s, metrics or LeaseMetrics()
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._thread: threading.Thread | None = None
        self._last_started: float | None = None
        self._inflight: tuple[Future, float, int] | None = None  # (answer, started_at, epoch) of the call in flight
        self._failures = 0  # failed renewal rounds in a row
        self._fenced_by_lease: float | None = None  # the deadline the site was seen past (logged once)

    # --- the loop ------------------------------------------------------------------------------------------------

    def start(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name=f"lease-keeper-{self.site_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Stop, then release both engines."""
        self.stop()
        for engine in {self.engine, self.read_engine}:
            engine.dispose()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception as exc:  # a database hiccup: the deadline written stands; the next round tries again
                log.warning("site %s: lease keeper round failed: %s", self.site_id, exc)
            self._sleep(self.poll_s)

    def tick(self) -> LeaseStep:
        """One round: read the row, renew if due (with one retry), then write the deadline or fence. Returns what
        was done (NOTHING when no renewal was due)."""
        control = store_site.read_control(self.read_engine, self.site_id)
        self._observe(control, self.clock())
        step = due(control, self._last_started, self.clock(), self.lease)
        if step.move is not LeaseMove.RENEW:
            return step
        started, epoch, renewal = self._renew_round(step.epoch)
        self._last_started = started
        after = after_renewal(self.site_id, store_site.read_control(self.read_engine, self.site_id), epoch, started,
                              renewal, self.lease)
        self._act(after, renewal)
        return after

    def _renew_round(self, epoch: int) -> tuple[float, int, Renewal]:
        """Up to two attempts, each waited for at most retry_timeout_s (the settings' timing rule allows exactly
        that between two renewals). Returns the last attempt's start, epoch and answer."""
        retrying = Retrying(stop=stop_after_attempt(2), wait=wait_none(), sleep=self._sleep,
                            retry=retry_if_result(lambda r: r[2].outcome is RenewalOutcome.UNAVAILABLE),
                            retry_error_callback=lambda state: state.outcome.result())
        return retrying(self._attempt, epoch)

    def _attempt(self, epoch: int) -> tuple[float, int, Renewal]:
        """One attempt: start a call, or (when the last one hung past retry_timeout_s) wait for that one again, so
        calls never overlap and reach the witness in the order they started."""
        if self._inflight is None:
            started = self.clock()
            self._inflight = (self._call(epoch, started), started, epoch)
        answer, started, call_epoch = self._inflight
        if not wait([answer], timeout=self.lease.retry_timeout_s).done:
            return started, call_epoch, Renewal(RenewalOutcome.UNAVAILABLE, reason=f"no answer from the witness "
                                                f"within retry_timeout_s ({self.lease.retry_timeout_s:g} s)")
        self._inflight = None
        try:
            renewal = answer.result()
        except Exception as exc:
            renewal = Renewal(RenewalOutcome.UNAVAILABLE, reason=f"{type(exc).__name__}: {exc}")
        return started, call_epoch, renewal

    def _call(self, epoch: int, started: float) -> Future:
        """Run the injected renew in a daemon thread of its own: a call hung on a dead connection must not keep the
        process from exiting, and the keeper goes on judging time while it hangs."""
        answer: Future = Future()

        def call() -> None:
            try:
                answer.set_result(self.renew(self.site_id, epoch, self.lease.ttl_s, started))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting keeper
                answer.set_exception(exc)
        threading.Thread(target=call, name=f"lease-renew-{self.site_id}", daemon=True).start()
        return answer

    # --- acting and telling ----------------------------------------------------------------------------------------

    def _act(self, step: LeaseStep, renewal: Renewal) -> None:
        if renewal.outcome is RenewalOutcome.UNAVAILABLE:
            self._failed(renewal.reason)
        if step.move is LeaseMove.WRITE_DEADLINE:
            store_site.set_lease(self.engine, self.site_id, epoch=step.epoch, until=step.until, now=self.clock())
            if renewal.outcome is not RenewalOutcome.RENEWED:  # a primary with no lease yet, refusing writes now
                log.warning("site %s refuses writes: %s", self.site_id, step.reason)
                return
            if self._failures or self._fenced_by_lease is not None:
                log.warning("site %s renewed its lease in the witness again after %d failed renewal(s); it accepts "
                            "writes until %.3f", self.site_id, self._failures, step.until)
            self._failures, self._fenced_by_lease = 0, None
        elif step.move is LeaseMove.FENCE:
            log.warning("site %s fences itself: the witness names site %s primary at epoch %d (%s)", self.site_id,
                        step.primary, step.epoch, step.reason)
            try:
                store_site.fence(self.engine, self.site_id, epoch=step.epoch, primary_site=step.primary,
                                 now=self.clock())
            except DomainError as exc:  # the row moved meanwhile (fenced by a runbook already): nothing to do
                log.warning("site %s: fencing itself was refused: %s", self.site_id, exc)
        elif renewal.outcome is RenewalOutcome.SUPERSEDED:
            log.warning("site %s: %s", self.site_id, step.reason)

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self.metrics.lease_renewal_failed("unavailable")
        if self._failures % self.FAILURE_LOG_EVERY == 1:
            log.warning("site %s could not renew its lease in the witness (%d failed in a row): %s", self.site_id,
                        self._failures, reason)

    def _observe(self, control: SiteControl | None, now: float) -> None:
        """The gauge, and the warning when the site passes its deadline (it refuses writes from then on)."""
        if not keeps_lease(control) or control.lease_until is None:
            self.metrics.show_lease(None)
            return
        self.metrics.show_lease(max(0.0, control.lease_until - now))
        if now >= control.lease_until and self._fenced_by_lease != control.lease_until:
            self._fenced_by_lease = control.lease_until
            log.warning("site %s fenced itself: it could not renew its lease in the witness by %.3f and refuses "
                        "writes (lease_expired) until it does", self.site_id, control.lease_until)
