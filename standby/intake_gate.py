"""The intake gate: one pure decision, from a site's control row, on whether a write is admitted, held or refused.

Used by the API before a write is submitted, by the clearance pipeline inside the batch's transaction (and again
right before it commits), and by `/readyz`, so they never disagree. No I/O and no clock here: the callers read the
row (and the witness's epoch) and pass the time (`now`, seconds since the Unix epoch, the clock the lease keeper
stamps `lease_until` with).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Protocol

from standby.domain.states import IntakeState, SiteRole

HOLD_CODE = "intake_frozen"
LEASE_EXPIRED = "lease_expired"
REFUSAL_CODES = frozenset({"site_uninitialised", "fenced", "not_primary", "stale_epoch", LEASE_EXPIRED})
RETRY_AFTER_S = 1


class Admission(str, Enum):
    ADMIT = "admit"  # carry the write out now
    HOLD = "hold"  # park the write until intake opens (bounded by the freeze's hold_s and hold_max)
    REFUSE = "refuse"  # answer at once with `status`, `code` and `message`


class ControlRow(Protocol):
    """What the gate reads of a control row (`standby.store.site.SiteControl` has it)."""

    role: SiteRole
    epoch: int
    intake_state: IntakeState
    primary_site: str | None
    lease_until: float | None  # the self-fencing deadline (standby.lease); None: the site keeps no lease


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer. For ADMIT, code and message are empty and status 200; for HOLD and REFUSE, status is the
    HTTP status to answer with if the write is not (or no longer) held, `retry_after_s` what to send as
    Retry-After, and `primary_site` the site that takes writes, when known."""

    admission: Admission
    code: str = ""
    message: str = ""
    status: int = 200
    primary_site: str | None = None
    retry_after_s: int | None = None

    @property
    def admitted(self) -> bool:
        return self.admission is Admission.ADMIT

    @property
    def held(self) -> bool:
        return self.admission is Admission.HOLD


def decide(site_id: str, control: ControlRow | None, *, now: float | None = None, authority_epoch: int | None = None,
           authority_primary: str | None = None) -> GateDecision:
    """Admit, hold or refuse a write at `site_id` given its control row, at time `now`.

    In order: no row → REFUSE site_uninitialised; intake fenced (an old primary, now a standby) → REFUSE fenced;
    any other standby → REFUSE not_primary; `authority_epoch` (the witness's current epoch, when known) newer than the row's →
    REFUSE stale_epoch; the row's `lease_until` set and `now` at or past it → REFUSE lease_expired (the primary
    could not renew its lease in the witness: it fences itself before anyone may take the lease over); intake
    frozen → HOLD intake_frozen; otherwise ADMIT. `now` None skips the lease check (every caller on the write path
    passes its clock); a row without `lease_until` keeps no lease discipline (no witness, or a primary whose keeper
    has not renewed yet). Every refusal is a 503 with Retry-After, because another site (or this one, later) may
    take the write. `primary_site` is the site that
    takes writes as far as this site knows: the row's, or `authority_primary` (the witness's) when the row names
    this site but it may not write."""
    if control is None:
        return _refuse("site_uninitialised", f"site {site_id} has no control row; run `standbyctl db upgrade`", None)
    primary = control.primary_site
    elsewhere = primary if primary not in (None, site_id) else authority_primary
    if control.intake_state is IntakeState.FENCED:  # before the role: a fenced old primary is a standby too
        return _refuse("fenced", f"site {site_id} was fenced: another site is primary (site "
                                 f"{elsewhere or 'unknown'}); it refuses writes", elsewhere)
    if control.role is not SiteRole.PRIMARY:
        return _refuse("not_primary", f"site {site_id} is a standby and refuses writes; the primary is site "
                                      f"{elsewhere or 'unknown'}", elsewhere)
    if authority_epoch is not None and authority_epoch > control.epoch:
        return _refuse("stale_epoch", f"site {site_id} was promoted at epoch {control.epoch} but the witness is at "
                                      f"epoch {authority_epoch}; another site is primary", authority_primary)
    if now is not None and control.lease_until is not None and now >= control.lease_until:
        return _refuse(LEASE_EXPIRED, f"site {site_id} could not renew its lease in the witness by "
                                      f"{_utc(control.lease_until)} and refuses writes until it does", None)
    if control.intake_state is IntakeState.FROZEN:
        return GateDecision(Admission.HOLD, HOLD_CODE, f"site {site_id} has intake frozen for a cutover; retry",
                            503, primary, RETRY_AFTER_S)
    return GateDecision(Admission.ADMIT, primary_site=primary)


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _refuse(code: str, message: str, primary: str | None) -> GateDecision:
    return GateDecision(Admission.REFUSE, code, message, 503, primary, RETRY_AFTER_S)
