"""The watch's loop: every interval, observe the primary, decide (decide.py), audit the decision when it changes,
and in automatic mode fail over.

Contract (`WatchLoop`):
- `tick()` is one round: read the witness; health-check the primary it names (GET /readyz of its URL, bounded by
  watch.health_timeout_s: a primary that answers but refuses writes, e.g. fenced or past its lease, is not healthy);
  read the witness again (so the lease is compared with a fresh state); read this site's control row; once the
  failed checks reach watch.failures_before_failover, also the unfinished runbook runs and the last automatic
  failover in the witness's audit; then `decide`. Returns the Verdict.
- Audit: a decision is audited in the witness (action `watch.decide`, target this site, outcome the Decision's
  value, detail {"rule", "reason", "would"}) when its key (decision, rule, primary, epoch) differs from the last
  one, not every tick. An audit that fails (witness unreachable) is reported and the loop goes on.
- FAIL_OVER: its `watch.decide` audit is written first and must succeed (it is what the flap guard of every watch
  reads, so a failover with no record could be repeated); then `run_failover(old_primary, this_site)` runs the
  failover runbook; its outcome is audited as `watch.failover` (outcome: the run's status). A failed attempt counts
  for the flap guard too: the watch never retries a failover by itself within flap_guard_s (refused_retry_s when
  the runbook refused it: its preconditions failed and nothing changed).
- `run()` ticks every watch.interval_s until `should_stop()`; `once()` makes one observation (up to
  failures_before_failover checks, fewer when the decision does not hinge on more) and returns its verdict.
- Nothing raised by a health check, the witness or this site's database ends the loop: it becomes the decision.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx

from cutover.runbook.plan import RunStatus
from cutover.watch.decide import Decision, HealthHistory, Observation, Rule, Verdict, configured_standby, decide
from cutover.watch.metrics import WatchMetrics
from cutover.witness.contract import AuditRecord, RunRecord, Witness, WitnessError, WitnessState
from standby.settings import Settings
from standby.store.site import SiteControl

DECIDE_ACTION = "watch.decide"
FAILOVER_ACTION = "watch.failover"
AUDIT_SCAN = 1000  # audit records searched for the last automatic failover (the audit holds operator actions only)
RUN_SCAN = 50  # recent runs searched for one that has not finished


@dataclass(frozen=True)
class FailoverResult:
    run_id: str | None
    status: str  # the run's RunStatus value, or "error" when the engine could not run it
    reason: str = ""


class WatchObserver:
    """Live output of the watch (the CLI prints it); every method is optional."""

    def decision(self, verdict: Verdict, at: float) -> None: ...

    def failover_started(self, old_primary: str, new_primary: str) -> None: ...

    def failover_finished(self, result: FailoverResult) -> None: ...

    def warning(self, message: str) -> None: ...


def check_readyz(http: httpx.Client, url: str, timeout_s: float) -> tuple[bool, str]:
    """(passed, how it failed): GET {url}/readyz answered 200 within `timeout_s`."""
    try:
        answer = http.get(f"{url}/readyz", timeout=timeout_s)
    except httpx.TimeoutException:
        return False, f"no answer from {url} within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__} at {url}"
    if answer.status_code == 200:
        return True, ""
    try:
        code = answer.json().get("code") or ""
    except ValueError:
        code = ""
    return False, f"/readyz answered {answer.status_code}" + (f" {code}" if code else "")


def last_automatic_failover(records: Iterable[AuditRecord]) -> tuple[float | None, bool]:
    """When the newest automatic failover was decided (a `watch.decide` record with outcome fail_over), and whether
    its runbook refused it (the `watch.failover` record after it, from the same site, has outcome refused)."""
    records = list(records)
    decided = max((r for r in records if r.action == DECIDE_ACTION and r.outcome == Decision.FAIL_OVER.value),
                  key=lambda r: r.at, default=None)
    if decided is None:
        return None, False
    outcome = next((r.outcome for r in sorted(records, key=lambda r: r.at)
                    if r.action == FAILOVER_ACTION and r.target == decided.target and r.at >= decided.at), None)
    return decided.at, outcome == RunStatus.REFUSED.value


def unfinished_runs(runs: Iterable[RunRecord]) -> tuple[str, ...]:
    return tuple(r.run_id for r in runs if not RunStatus(r.status).is_terminal)


class WatchLoop:
    def __init__(self, site: str, settings: Settings, witness: Witness, *, site_urls: Mapping[str, str],
                 read_local: Callable[[], SiteControl | None], operator: str, auto: bool,
                 run_failover: Callable[[str, str], FailoverResult] | None = None,
                 check: Callable[[str], tuple[bool, str]] | None = None, metrics: WatchMetrics | None = None,
                 observer: WatchObserver | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], object] = time.sleep, should_stop: Callable[[], bool] = lambda: False):
        if auto and run_failover is None:
            raise ValueError("automatic mode needs run_failover")
        self.site, self.settings, self.witness, self.site_urls = site, settings, witness, dict(site_urls)
        self.read_local, self.operator, self.auto, self.run_failover = read_local, operator, auto, run_failover
        self._http = httpx.Client() if check is None else None
        self.check = check or (lambda url: check_readyz(self._http, url, settings.watch.health_timeout_s))
        self.metrics = metrics or WatchMetrics(site)
        self.observer = observer or WatchObserver()
        self.clock, self.sleep, self.should_stop = clock, sleep, should_stop
        self.history = HealthHistory()
        self._last_key: tuple | None = None

    # -- driving ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        interval = self.settings.watch.interval_s
        while not self.should_stop():
            started = self.clock()
            self.tick()
            self.sleep(max(0.0, interval - (self.clock() - started)))

    def once(self) -> Verdict:
        verdict = self.tick()
        for _ in range(self.settings.watch.failures_before_failover - 1):
            if verdict.rule is not Rule.HEALTH_FAILING or self.should_stop():
                break
            self.sleep(self.settings.watch.interval_s)
            verdict = self.tick()
        return verdict

    def tick(self) -> Verdict:
        verdict = decide(self.observe(), self.settings.watch, self.auto)
        self.metrics.decision.state(verdict.decision.value)
        if verdict.decision is Decision.FAIL_OVER:
            self._fail_over(verdict)
        elif verdict.key != self._last_key:
            self._last_key = verdict.key
            self.observer.decision(verdict, self.clock())
            self._audit_decision(verdict)
        return verdict

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # -- observing ----------------------------------------------------------------------------------------------

    def observe(self) -> Observation:
        try:
            state = self._check_primary(self.witness.state())
            now = self.clock()
            failures = self.history.failures if (state.primary_site, state.epoch) == (
                self.history.primary, self.history.epoch) else 0
            local = self._local()
            standby, why = (configured_standby(state.primary_site, self.settings.sites,
                                               self.settings.sync.standby_of(state.primary_site))
                            if state.primary_site else (None, ""))
            runs, last_auto, refused = (), None, False
            if failures >= self.settings.watch.failures_before_failover:  # only then can decide() look at them
                runs = unfinished_runs(self.witness.runs(RUN_SCAN))
                last_auto, refused = last_automatic_failover(self.witness.audit_records(AUDIT_SCAN))
        except WitnessError as exc:
            return Observation(self.site, self.clock(), None, witness_error=str(exc))
        return Observation(self.site, now, state, local_role=local[0], local_primary=local[1], local_error=local[2],
                           failures=failures, last_failure=self.history.last_failure, configured_standby=standby,
                           standby_rule=why, runs_in_progress=runs, last_auto_failover_at=last_auto,
                           last_auto_failover_refused=refused)

    def _check_primary(self, state: WitnessState) -> WitnessState:
        """Health-check the primary `state` names (unless it is this site) and return a fresh state."""
        primary = state.primary_site
        if primary is None or primary == self.site:
            self.history = HealthHistory()
            return state
        url = self.site_urls.get(primary)
        ok, why = self.check(url) if url else (False, f"site {primary} is not in the settings")
        self.history = self.history.after(primary, state.epoch, ok, why)
        self.metrics.checked(ok, self.history.failures)
        return self.witness.state()

    def _local(self) -> tuple:
        try:
            control = self.read_local()
        except Exception as exc:  # noqa: BLE001 - an unreadable database is an observation, not the end of watching
            return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if control is None:
            return None, None, f"site {self.site} has no control row"
        return control.role, control.primary_site, ""

    # -- acting -------------------------------------------------------------------------------------------------

    def _audit_decision(self, verdict: Verdict) -> bool:
        args = {"primary": verdict.primary, "epoch": verdict.epoch, "auto": self.auto,
                "failures": self.history.failures}
        detail = {"rule": verdict.rule.value, "reason": verdict.reason}
        if verdict.would is not None:
            detail["would"] = verdict.would.value
        return self._audit(AuditRecord(self.clock(), self.operator, DECIDE_ACTION, self.site, args,
                                       verdict.decision.value, detail=detail))

    def _audit(self, record: AuditRecord) -> bool:
        try:
            self.witness.audit(record)
            return True
        except WitnessError as exc:
            self.observer.warning(f"could not audit {record.action} {record.outcome}: {exc}")
            return False

    def _fail_over(self, verdict: Verdict) -> None:
        self._last_key = verdict.key
        self.observer.decision(verdict, self.clock())
        if not self._audit_decision(verdict):  # no record, no failover: the flap guard could not see it
            self.observer.warning("not failing over without its audit record; trying again next round")
            self._last_key = None
            return
        old, started = verdict.primary, self.clock()
        self.observer.failover_started(old, self.site)
        try:
            result = self.run_failover(old, self.site)
        except Exception as exc:  # noqa: BLE001 - the watch reports it and goes on watching
            result = FailoverResult(None, "error", f"{type(exc).__name__}: {exc}")
        self.metrics.failover(result.status)
        self._audit(AuditRecord(self.clock(), self.operator, FAILOVER_ACTION, self.site,
                                {"from": old, "to": self.site, "run_id": result.run_id}, result.status,
                                duration_s=round(self.clock() - started, 3), detail={"reason": result.reason}))
        self.observer.failover_finished(result)
        self._last_key = None  # whatever comes after the failover is reported afresh
