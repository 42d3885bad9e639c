"""When does the witness consider a primary's lease gone? Pure, for the failover and the watch.

The primary's lease keeper (standby.lease) renews in the witness every `lease.renew_interval_s`; a renewal that
started at t sets `lease_expires_at` = t + ttl_s there, and the site stops accepting writes at t + ttl_s -
fence_margin_s, earlier. So once the witness's lease has expired, the old primary has stopped writing (up to the
clock skew the margin covers), and another site may be promoted. `renewer(witness)` is what the keeper calls to
renew (the composition root hands it over: `standby` does not import the witness).
"""
from __future__ import annotations

from cutover.witness.contract import StaleEpoch, Witness, WitnessState, WitnessUnavailable
from standby.lease import Renew, Renewal, RenewalOutcome


def lease_expired(state: WitnessState, now: float) -> bool:
    """Whether the lease of the primary `state` names is gone at `now` (seconds since the Unix epoch): no lease
    held (never renewed, or cleared by a promotion) or `lease_expires_at <= now`. Says nothing about the epoch: a
    caller that compares epochs checks that separately ("the old primary is fenced" = the epoch moved past it, or
    this)."""
    return state.lease_expires_at is None or state.lease_expires_at <= now


def renewer(witness: Witness) -> Renew:
    """The `renew` a site's lease keeper (standby.lease.LeaseKeeper) is given: the witness's renew_lease, answered
    as a plain Renewal. StaleEpoch → SUPERSEDED with the witness's current epoch and primary (read right after;
    if that read fails too, UNAVAILABLE); WitnessUnavailable → UNAVAILABLE. Anything else is raised (the keeper
    counts it as unavailable and logs it)."""
    def renew(site_id: str, epoch: int, ttl_s: float, now: float) -> Renewal:
        try:
            witness.renew_lease(site_id, epoch, ttl_s, now)
        except StaleEpoch as refused:
            try:
                state = witness.state()
            except WitnessUnavailable as exc:
                return Renewal(RenewalOutcome.UNAVAILABLE, reason=f"{refused}; then: {exc}")
            return Renewal(RenewalOutcome.SUPERSEDED, epoch=state.epoch, primary=state.primary_site,
                           reason=str(refused))
        except WitnessUnavailable as exc:
            return Renewal(RenewalOutcome.UNAVAILABLE, reason=str(exc))
        return Renewal(RenewalOutcome.RENEWED)
    return renew
