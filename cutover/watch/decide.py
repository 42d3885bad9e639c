"""What a site's watch does about the primary: one pure decision from plain values, no I/O.

Contract:
- `decide(observation, settings, auto)` returns a Verdict: the Decision, the Rule that made it (stable, for
  auditing only changes) and a reason sentence for an operator. Rules are tried in a fixed order; the first that
  applies decides:
    1. witness_unreachable  -> CANNOT_DECIDE  (nothing is safe without the witness; the failover needs it anyway)
    2. no_primary           -> NOTHING        (the witness names no primary: nothing to watch)
    3. self_primary         -> NOTHING        (this site is the primary; a standby's watch acts, not this one)
    4. primary_healthy      -> NOTHING        (the last health check of the primary passed)
    5. health_failing       -> WAIT           (fewer consecutive failed checks than failures_before_failover)
    6. lease_valid          -> WAIT           (the primary fails its checks but its lease has not expired: it may
                                               still be writing, so nobody may take over yet)
    7. not_its_standby / other_standby / no_configured_standby -> NOT_ELIGIBLE (only the configured, or only,
                                               standby of the failed primary acts; its control row must say so too)
    8. run_in_progress      -> BLOCKED_BY_RUN (a runbook run has not finished: resume or abort it first)
    9. manual_mode          -> OBSERVE_ONLY   (without --auto: reports what automatic mode would do)
   10. flap_guard           -> BLOCKED_BY_FLAP_GUARD (an automatic failover happened less than flap_guard_s ago)
   11. failover_due         -> FAIL_OVER      (from the failed primary to this site)
- The guard's input, `last_auto_failover_at`, comes from the witness's audit (any watch process), so it survives a
  restart of watch; `runs_in_progress` and it are only consulted past rule 6 (a loop may skip reading them before).
- "Lease expired" is `cutover.witness.lease.lease_expired`: no lease, or `lease_expires_at <= now`.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum

from cutover.witness.contract import WitnessState
from cutover.witness.lease import lease_expired
from standby.domain.states import SiteRole
from standby.settings import WatchSettings


class Decision(str, Enum):
    NOTHING = "nothing"
    CANNOT_DECIDE = "cannot_decide"
    WAIT = "wait"
    NOT_ELIGIBLE = "not_eligible"
    BLOCKED_BY_RUN = "blocked_by_run"
    OBSERVE_ONLY = "observe_only"
    BLOCKED_BY_FLAP_GUARD = "blocked_by_flap_guard"
    FAIL_OVER = "fail_over"


class Rule(str, Enum):
    WITNESS_UNREACHABLE = "witness_unreachable"
    NO_PRIMARY = "no_primary"
    SELF_PRIMARY = "self_primary"
    PRIMARY_HEALTHY = "primary_healthy"
    HEALTH_FAILING = "health_failing"
    LEASE_VALID = "lease_valid"
    NOT_ITS_STANDBY = "not_its_standby"
    OTHER_STANDBY = "other_standby"
    NO_CONFIGURED_STANDBY = "no_configured_standby"
    RUN_IN_PROGRESS = "run_in_progress"
    MANUAL_MODE = "manual_mode"
    FLAP_GUARD = "flap_guard"
    FAILOVER_DUE = "failover_due"


# Each rule leads to exactly one decision.
RULE_DECISION: dict[Rule, Decision] = {
    Rule.WITNESS_UNREACHABLE: Decision.CANNOT_DECIDE,
    Rule.NO_PRIMARY: Decision.NOTHING,
    Rule.SELF_PRIMARY: Decision.NOTHING,
    Rule.PRIMARY_HEALTHY: Decision.NOTHING,
    Rule.HEALTH_FAILING: Decision.WAIT,
    Rule.LEASE_VALID: Decision.WAIT,
    Rule.NOT_ITS_STANDBY: Decision.NOT_ELIGIBLE,
    Rule.OTHER_STANDBY: Decision.NOT_ELIGIBLE,
    Rule.NO_CONFIGURED_STANDBY: Decision.NOT_ELIGIBLE,
    Rule.RUN_IN_PROGRESS: Decision.BLOCKED_BY_RUN,
    Rule.MANUAL_MODE: Decision.OBSERVE_ONLY,
    Rule.FLAP_GUARD: Decision.BLOCKED_BY_FLAP_GUARD,
    Rule.FAILOVER_DUE: Decision.FAIL_OVER,
}


@dataclass(frozen=True)
class Observation:
    """What the loop saw in one tick. `failures` counts the consecutive failed health checks of the primary the
    witness names (under its epoch); `last_failure` says how the last one failed."""

    site: str
    now: float
    witness: WitnessState | None
    witness_error: str = ""
    local_role: SiteRole | None = None  # this site's control row; None when it could not be read
    local_primary: str | None = None  # the primary this site's control row follows
    local_error: str = ""
    failures: int = 0
    last_failure: str = ""
    configured_standby: str | None = None  # of the primary, from configured_standby()
    standby_rule: str = ""  # why that site (or why none)
    runs_in_progress: tuple[str, ...] = ()
    last_auto_failover_at: float | None = None
    last_auto_failover_refused: bool = False  # its runbook refused it: nothing changed, a shorter guard applies


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    rule: Rule
    reason: str
    primary: str | None = None
    epoch: int | None = None
    would: Decision | None = None  # in manual mode: what automatic mode would decide

    @property
    def key(self) -> tuple:
        """What must change for the decision to count as new (and be audited again): not the numbers in the
        reason, which move every tick."""
        return self.decision, self.rule, self.would, self.primary, self.epoch


@dataclass(frozen=True)
class HealthHistory:
    """Consecutive failed health checks of one primary under one epoch; a new primary or epoch starts afresh."""

    primary: str | None = None
    epoch: int | None = None
    failures: int = 0
    last_failure: str = ""
    checks: int = 0

    def after(self, primary: str, epoch: int, ok: bool, reason: str = "") -> "HealthHistory":
        base = self if (primary, epoch) == (self.primary, self.epoch) else HealthHistory(primary, epoch)
        if ok:
            return replace(base, failures=0, last_failure="", checks=base.checks + 1)
        return replace(base, failures=base.failures + 1, last_failure=reason, checks=base.checks + 1)


def configured_standby(primary: str, sites: Collection[str], sync_partner: str | None) -> tuple[str | None, str]:
    """The standby that takes over from `primary`, and why: its synchronous partner (sync.pairs) when it has one,
    else the only other configured site; None when several sites could and none is configured."""
    if sync_partner:
        return sync_partner, f"{sync_partner} is {primary}'s partner in sync.pairs"
    others = sorted(s for s in sites if s != primary)
    if len(others) == 1:
        return others[0], f"{others[0]} is the only other site"
    return None, (f"{primary} has {len(others)} possible standbys ({', '.join(others)}) and no partner in "
                  f"sync.pairs")


def decide(obs: Observation, settings: WatchSettings, auto: bool) -> Verdict:
    """The watch's decision for this observation (rules in the module docstring)."""
    state = obs.witness
    if state is None:
        return _verdict(Rule.WITNESS_UNREACHABLE, f"cannot read the witness: {obs.witness_error or 'no answer'}")
    primary, epoch = state.primary_site, state.epoch
    at = {"primary": primary, "epoch": epoch}
    if primary is None:
        return _verdict(Rule.NO_PRIMARY, f"the witness names no primary (epoch {epoch})", **at)
    if primary == obs.site:
        return _verdict(Rule.SELF_PRIMARY, f"this site ({obs.site}) is the primary at epoch {epoch}", **at)
    if obs.failures == 0:
        return _verdict(Rule.PRIMARY_HEALTHY, f"primary {primary} (epoch {epoch}) answers its health check", **at)
    failed = (f"primary {primary} failed {obs.failures} health check{'s' if obs.failures != 1 else ''} in a row "
              f"(last: {obs.last_failure})")
    if obs.failures < settings.failures_before_failover:
        return _verdict(Rule.HEALTH_FAILING, f"{failed}; a failover needs {settings.failures_before_failover}", **at)
    if not lease_expired(state, obs.now):
        return _verdict(Rule.LEASE_VALID, f"{failed}, but its lease runs until {_clock(state.lease_expires_at)} "
                                          f"({state.lease_expires_at - obs.now:.1f} s more): it may still be "
                                          f"writing, so nobody may take over yet", **at)
    lease = (f"it holds no lease under epoch {epoch}" if state.lease_expires_at is None else
             f"its lease expired at {_clock(state.lease_expires_at)}")
    not_eligible = _eligibility(obs, primary)
    if not_eligible is not None:
        rule, why = not_eligible
        return _verdict(rule, f"{failed} and {lease}, but {why}", **at)
    if obs.runs_in_progress:
        runs = ", ".join(obs.runs_in_progress)
        return _verdict(Rule.RUN_IN_PROGRESS, f"{failed} and {lease}, but run {runs} has not finished: "
                                              f"`standbyctl runbook resume` or `abort` it first", **at)
    guard = _flap_guard(obs, settings)
    if not auto:
        would = Decision.FAIL_OVER if guard is None else Decision.BLOCKED_BY_FLAP_GUARD
        then = (f"automatic mode would fail over {primary} -> {obs.site}" if guard is None else
                f"automatic mode would not: {guard}")
        return _verdict(Rule.MANUAL_MODE, f"{failed} and {lease}; {then}. Manual mode (no --auto): an operator "
                                          f"runs `standbyctl runbook run failover --param from={primary} "
                                          f"--param to={obs.site}`", would=would, **at)
    if guard is not None:
        return _verdict(Rule.FLAP_GUARD, f"{failed} and {lease}, but {guard}; an operator may still run the "
                                         f"failover runbook by hand", **at)
    return _verdict(Rule.FAILOVER_DUE, f"{failed} and {lease}; {obs.site} is its standby "
                                       f"({obs.standby_rule}); fail over {primary} -> {obs.site}", **at)


def _eligibility(obs: Observation, primary: str) -> tuple[Rule, str] | None:
    """Why this site may not take over from `primary`, or None when it may."""
    if obs.local_role is None:
        return Rule.NOT_ITS_STANDBY, f"this site's control row cannot be read ({obs.local_error or 'no row'})"
    if obs.local_role is not SiteRole.STANDBY or obs.local_primary != primary:
        return Rule.NOT_ITS_STANDBY, (f"this site ({obs.site}) is {obs.local_role.value} following "
                                      f"{obs.local_primary or 'no site'}, not a standby of {primary}")
    if obs.configured_standby is None:
        return Rule.NO_CONFIGURED_STANDBY, f"{obs.standby_rule}: fail over by hand"
    if obs.configured_standby != obs.site:
        return Rule.OTHER_STANDBY, f"its standby is {obs.configured_standby} ({obs.standby_rule}), whose watch acts"
    return None


def _flap_guard(obs: Observation, settings: WatchSettings) -> str | None:
    """Why the flap guard holds now, or None. A last attempt its runbook refused (nothing changed) holds only for
    refused_retry_s: a standby briefly unready must not keep automatic failover off for the whole flap guard."""
    last = obs.last_auto_failover_at
    period, what = ((settings.refused_retry_s, "automatic failover attempt (refused by its preconditions, nothing "
                                               "changed)") if obs.last_auto_failover_refused else
                    (settings.flap_guard_s, "automatic failover"))
    if last is None or obs.now - last >= period:
        return None
    return (f"the last {what} was at {_clock(last)} ({obs.now - last:.0f} s ago) and the flap guard allows none "
            f"within {period:g} s (until {_clock(last + period)})")


def _verdict(rule: Rule, reason: str, *, primary: str | None = None, epoch: int | None = None,
             would: Decision | None = None) -> Verdict:
    return Verdict(RULE_DECISION[rule], rule, reason, primary, epoch, would)


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3] + " UTC"
