"""The switchover's actions: each one idempotent (a step whose intent was journaled but not its outcome is run again
after a crash), each acting through the one owner of its question: the witness for who is primary, the site's
control row for intake, replication.progress for how far the standby has applied.

Order (runbooks/switchover.yaml): preflight checks → freeze_intake (the freeze drains in-flight batches) →
wait_caught_up → bump_epoch (the old primary is fenced: point of no return) → promote → prepare_reverse_stream →
resume_intake → start_replicator → postcheck. Everything between freeze and resume is on the clock, so nothing slow
(a process or a Ray start) happens there.
"""
from __future__ import annotations

import time

from pydantic import Field

from cutover.actions.freeze_estimate import estimate_freeze
from cutover.actions.sites import Sites
from cutover.runbook.actions import ActionArgs, ActionContext, ActionFailed, ActionRegistry
from cutover.witness.contract import StaleEpoch
from replication.progress import NotCaughtUp, committed_position, wait_until_applied
from replication.promotion import advance_sequences
from replication.sources import stream_name
from replication.streams import prepare_stream
from standby.domain.states import IntakeState, SiteRole
from standby.store import site as site_control


class SiteArg(ActionArgs):
    site: str


class ResumeArgs(SiteArg):
    frozen_since: float | None = Field(None, description="when the freeze began (the old primary's frozen_at), "
                                                         "so the freeze observed is the one clients saw")


class PairArgs(ActionArgs):
    primary: str = Field(description="the site that is primary now")
    standby: str = Field(description="the site that takes over")


class FreezeArgs(ActionArgs):
    site: str
    hold_s: float = Field(5.0, gt=0, le=300, description="how long a write may be held before it gets 503")
    hold_max: int = Field(10_000, ge=1, description="how many writes may be held at once")


class CatchUpArgs(PairArgs):
    timeout_s: float = Field(5.0, gt=0, le=3600)


class EstimateArgs(PairArgs):
    budget_s: float = Field(1.0, gt=0, le=3600, description="the freeze budget; refused before freezing if over")
    max_lag_s: float = Field(2.0, gt=0, description="a standby further behind than this is not ready")


class EpochArgs(ActionArgs):
    site: str
    epoch: int = Field(ge=1)


class BumpArgs(PairArgs):
    expected_epoch: int = Field(ge=1, description="the epoch the old primary serves under (from the freeze)")


class ReplicatorArgs(PairArgs):
    spawn: bool = Field(True, description="start `standbyctl replicate` for the reverse stream as its own process")
    timeout_s: float = Field(60.0, gt=0)


class VerifyArgs(PairArgs):
    settle_timeout_s: float = Field(30.0, gt=0)


# -- preconditions (read-only) ------------------------------------------------------------------------------------

def primary_is(ctx: ActionContext, args: PairArgs) -> dict:
    """The witness names `primary`, and its control row agrees (primary, open, under the witness's epoch)."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    control = sites.control(args.primary)
    if state.primary_site != args.primary:
        raise ActionFailed(f"the witness names site {state.primary_site or 'none'} primary at epoch {state.epoch}, "
                           f"not {args.primary}")
    if control.role is not SiteRole.PRIMARY or control.epoch != state.epoch:
        raise ActionFailed(f"site {args.primary} is {control.role.value} at epoch {control.epoch}; the witness is at "
                           f"epoch {state.epoch}")
    standby = sites.control(args.standby)
    if standby.role is not SiteRole.STANDBY:
        raise ActionFailed(f"site {args.standby} is {standby.role.value}, not a standby")
    return {"epoch": state.epoch, "intake": control.intake_state.value}


def reachable(ctx: ActionContext, args: SiteArg) -> dict:
    """The site's API answers /healthz."""
    return ctx.services.healthz(args.site)


def standby_ready(ctx: ActionContext, args: EstimateArgs) -> dict:
    """Replication primary → standby is running (its heartbeat is recent), the lag is under `max_lag_s`, and the
    estimated freeze fits the budget: refused here, before anything is frozen, when it would not."""
    sites: Sites = ctx.services
    lag = sites.replication_lag_s(args.primary, args.standby)
    if lag is None:
        raise ActionFailed(f"no replication stream {stream_name(args.primary, args.standby)} on site {args.standby}; "
                           f"start `standbyctl replicate --from {args.primary} --to {args.standby}`")
    if lag > args.max_lag_s:
        raise ActionFailed(f"site {args.standby} is {lag:.2f} s behind {args.primary} (bound {args.max_lag_s:g} s): "
                           f"is the replicator running?")
    pending, rate = sites.backlog(args.primary, args.standby)
    estimate = estimate_freeze(lag_s=lag, pending_changes=pending, apply_rate_per_s=rate, budget_s=args.budget_s)
    ctx.progress(estimate.reason)
    if not estimate.within_budget:
        raise ActionFailed(f"refused before freezing: {estimate.reason}")
    return {"lag_s": round(lag, 3), "estimated_freeze_s": round(estimate.seconds, 3), "pending_changes": pending}


def verify_clean(ctx: ActionContext, args: VerifyArgs) -> dict:
    """`verify` finds no difference between the two sites (chunks that differ are re-checked after the standby has
    applied what the primary had committed)."""
    report = ctx.services.verify(args.primary, args.standby, args.settle_timeout_s)
    if not report.ok:
        raise ActionFailed("verify found differences:\n" + "\n".join(report.summary()))
    return {"rows": report.rows, "seconds": round(report.seconds, 2)}


# -- steps ----------------------------------------------------------------------------------------------------------

def freeze_intake(ctx: ActionContext, args: FreezeArgs) -> dict:
    """Freeze the primary's intake under the witness's epoch; writes are held (bounded) from now on. The freeze
    waits for in-flight batches (the drain) and no batch commits after it."""
    sites: Sites = ctx.services
    epoch = sites.witness.state().epoch
    engine = sites.engine(args.site)
    before = time.monotonic()
    try:
        control = site_control.freeze(engine, args.site, epoch=epoch, hold_s=args.hold_s, hold_max=args.hold_max)
    except (site_control.EpochMismatch, site_control.DrainTimeout) as exc:
        raise ActionFailed(str(exc)) from None
    ctx.progress(f"site {args.site} frozen at epoch {control.epoch}; in-flight batches drained in "
                 f"{control.drained_s or 0:.3f} s")
    return {"epoch": control.epoch, "frozen_at": control.frozen_at, "drain_s": round(control.drained_s or 0, 4),
            "took_s": round(time.monotonic() - before, 4)}


def resume_intake(ctx: ActionContext, args: ResumeArgs) -> dict:
    """Open intake again on a frozen site (its held writes flow, in arrival order). Used to resume on the new
    primary, and as the freeze's rollback on the old one. A fenced site is never resumed (the witness moved on)."""
    sites: Sites = ctx.services
    control = sites.control(args.site)
    if control.intake_state is IntakeState.OPEN and control.role is SiteRole.PRIMARY:
        return {"epoch": control.epoch, "already_open": True}
    if control.intake_state is IntakeState.FENCED:
        raise ActionFailed(f"site {args.site} is fenced (epoch {control.fenced_epoch}); it cannot resume intake")
    since = args.frozen_since or control.frozen_at
    control = site_control.resume(sites.engine(args.site), args.site, epoch=control.epoch)
    result = {"epoch": control.epoch}
    if since:
        result["freeze_s"] = round(ctx.clock() - since, 4)
        ctx.observe_freeze(result["freeze_s"])
    return result


def wait_caught_up(ctx: ActionContext, args: CatchUpArgs) -> dict:
    """Wait (bounded) until the standby has applied the primary's last committed position."""
    sites: Sites = ctx.services
    source = sites.change_source(args.primary, args.standby)
    try:
        target = committed_position(source)
        applied = wait_until_applied(source, sites.engine(args.standby, writer=False),
                                     stream_name(args.primary, args.standby), target=target,
                                     timeout_s=args.timeout_s, poll_s=0.01)
    except NotCaughtUp as exc:
        raise ActionFailed(f"site {args.standby} did not catch up within {args.timeout_s:g} s: {exc}") from None
    finally:
        source.close()
    return {"target": target, "applied": applied}


def bump_epoch(ctx: ActionContext, args: BumpArgs) -> dict:
    """Promote `standby` in the witness (epoch + 1) and fence the old primary's control row under the new epoch.
    Past this step there are never two primaries: the old one refuses every write."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    if state.primary_site == args.standby and state.epoch == args.expected_epoch + 1:
        new_epoch = state.epoch  # a resumed run: the witness moved already
    else:
        try:
            new_epoch = sites.witness.promote(args.standby, args.expected_epoch).epoch
        except StaleEpoch as exc:
            raise ActionFailed(f"the witness moved on: {exc}") from None
    site_control.fence(sites.engine(args.primary), args.primary, epoch=new_epoch, primary_site=args.standby)
    return {"epoch": new_epoch}


def promote(ctx: ActionContext, args: EpochArgs) -> dict:
    """The standby becomes primary at the new epoch, intake still frozen (writes held) until resume. On PostgreSQL
    every sequence is first moved past the values replication copied, so the new primary's inserts never collide."""
    sites: Sites = ctx.services
    engine = sites.engine(args.site)
    advanced = advance_sequences(engine)
    control = site_control.promote(engine, args.site, epoch=args.epoch)
    return {"epoch": control.epoch, "sequences_advanced": len(advanced)}


def prepare_reverse_stream(ctx: ActionContext, args: PairArgs) -> dict:
    """Fix where replication new primary → old primary starts, before intake resumes, so none of the new primary's
    writes is missed (its consumer may start after). `primary` here is the new primary."""
    sites: Sites = ctx.services
    position = prepare_stream(sites.database_url(args.primary), sites.database_url(args.standby),
                              stream_name(args.primary, args.standby), sites.partitions_into(args.standby),
                              replace=True)
    return {"stream": stream_name(args.primary, args.standby), "position": position}


def start_replicator(ctx: ActionContext, args: ReplicatorArgs) -> dict:
    """Start (or find running) the reverse stream's consumer and wait until it applies."""
    sites: Sites = ctx.services
    pid = sites.start_replicator(args.primary, args.standby) if args.spawn else None
    applied = sites.wait_replicating(args.primary, args.standby, args.timeout_s)
    return {"pid": pid, "applied": applied}


def postcheck(ctx: ActionContext, args: VerifyArgs) -> dict:
    """After the switch: the new primary is open under the witness's epoch, and `verify` finds the two sites equal
    once the reverse stream has applied what the new primary committed."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    control = sites.control(args.primary)
    if state.primary_site != args.primary or control.epoch != state.epoch or control.intake_state is not IntakeState.OPEN:
        raise ActionFailed(f"site {args.primary} is {control.role.value}/{control.intake_state.value} at epoch "
                           f"{control.epoch}; the witness names {state.primary_site} at epoch {state.epoch}")
    return {"epoch": state.epoch, **verify_clean(ctx, args)}


def register(registry: ActionRegistry) -> ActionRegistry:
    """Add the switchover's actions to `registry` (their services must be a Sites)."""
    for name, (fn, read_only, description) in ACTIONS.items():
        registry.register(name, fn, read_only=read_only, args_model=ARGS[fn], description=description)
    return registry


ACTIONS = {
    # name: (function, read_only, description)
    "switchover.primary_is": (primary_is, True, "the witness and the site agree on who is primary"),
    "switchover.reachable": (reachable, True, "the site's API answers /healthz"),
    "switchover.standby_ready": (standby_ready, True, "replication running, lag under bound, freeze estimate in budget"),
    "switchover.verify_clean": (verify_clean, True, "verify finds the two sites equal"),
    "switchover.freeze_intake": (freeze_intake, False, "freeze intake (writes held); drains in-flight batches"),
    "switchover.resume_intake": (resume_intake, False, "open intake; held writes flow in arrival order"),
    "switchover.wait_caught_up": (wait_caught_up, True, "wait until the standby applied the primary's last commit"),
    "switchover.bump_epoch": (bump_epoch, False, "witness epoch + 1 for the new primary; fence the old one"),
    "switchover.promote": (promote, False, "make the standby primary at the new epoch (still frozen)"),
    "switchover.prepare_reverse_stream": (prepare_reverse_stream, False, "fix the reverse stream's start"),
    "switchover.start_replicator": (start_replicator, False, "start the reverse stream's consumer"),
    "switchover.postcheck": (postcheck, True, "new primary open at the witness's epoch; verify clean"),
}
ARGS = {freeze_intake: FreezeArgs, resume_intake: ResumeArgs, reachable: SiteArg, wait_caught_up: CatchUpArgs,
        bump_epoch: BumpArgs, promote: EpochArgs, prepare_reverse_stream: PairArgs, start_replicator: ReplicatorArgs,
        postcheck: VerifyArgs, verify_clean: VerifyArgs, standby_ready: EstimateArgs, primary_is: PairArgs}
