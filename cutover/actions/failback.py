"""The failback's actions (runbooks/failback.yaml; the operator's page is failback.md): the old primary `site`
comes back as a standby of the current primary `primary` without a full copy, what only it had is moved aside into
its quarantine, and reconcile brings each quarantined declaration back under its own number or lists it for review.

Order: preconditions (the witness names `primary`, which is open at the witness's epoch; the failover run recorded
its divergence point and reverse start) → fence_old (the old primary's control row fenced at the witness's epoch,
if it is not; also resolves `failover_run` = latest) → quarantine (cutover.failback.quarantine_tail) →
reverse_stream (the old stream old -> new retired, the stream new -> old started at the failover's `reverse_start`)
→ replicate (its replicator process started, caught up) → verify (both sites equal) → reconcile
(cutover.reconcile.Reconciler) → report (no quarantined declaration missing from the primary unless listed as a
conflict). Every action is idempotent: a resumed run repeats its last step and reaches the same state.
"""
from __future__ import annotations

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cutover.actions.failover_journal import Divergence, NoDivergence, divergence_of, latest_failover
from cutover.actions.sites import Sites
from cutover.failback import QuarantineStatus, quarantine_tail, quarantined
from cutover.reconcile import PrimaryNotOpen, Reconciler, group_rows
from cutover.runbook.actions import ActionArgs, ActionContext, ActionFailed, ActionRegistry
from replication.apply import apply_engine
from replication.divergence import last_images, unapplied_changes
from replication.errors import ReplicationError
from replication.progress import NotCaughtUp, wait_until_applied
from replication.sources import slot_name, stream_name
from replication.streams import retire_stream, start_stream_at
from standby.domain.states import IntakeState, SiteRole
from standby.store import site as site_control
from standby.store.schema import declarations

LATEST = "latest"


class PairArgs(ActionArgs):
    site: str = Field(description="the old primary, to rebuild as a standby")
    primary: str = Field(description="the current primary")


class RunArgs(PairArgs):
    failover_run: str = Field(LATEST, description="the failover run whose divergence point to use")


class ReplicateArgs(PairArgs):
    timeout_s: float = Field(120.0, gt=0, le=3600, description="how long to wait for the stream to catch up")


def _divergence(sites: Sites, args: RunArgs) -> tuple[str, Divergence]:
    """The failover run (resolving `latest`) and its divergence point, checked against the sites named."""
    run_id = args.failover_run
    if run_id == LATEST:
        run_id = latest_failover(sites.witness, args.primary, args.site)
        if run_id is None:
            raise ActionFailed(f"no completed failover from {args.site} to {args.primary} in the witness; name one "
                               f"with --param failover_run=RUN_ID")
    try:
        divergence = divergence_of(sites.witness, run_id)
    except NoDivergence as exc:
        raise ActionFailed(f"failover run {run_id}: {exc}") from None
    if (divergence.old_primary, divergence.new_primary) != (args.site, args.primary):
        raise ActionFailed(f"failover run {run_id} went from {divergence.old_primary} to {divergence.new_primary}, "
                           f"not from {args.site} to {args.primary}")
    if divergence.epoch is None or divergence.reverse_start is None:
        raise ActionFailed(f"failover run {run_id} has not recorded its new epoch and reverse start (steps bump_epoch "
                           f"and reverse_start); finish it first (standbyctl runbook resume {run_id})")
    return run_id, divergence


# -- preconditions (read-only) ------------------------------------------------------------------------------------

def primary_is_current(ctx: ActionContext, args: RunArgs) -> dict:
    """The witness names `primary`, its control row is an open primary at the witness's epoch, and the failover
    run recorded where the histories part."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    if args.site == args.primary:
        raise ActionFailed(f"site and primary are both {args.site}")
    if state.primary_site != args.primary:
        raise ActionFailed(f"the witness names site {state.primary_site or 'none'} primary at epoch {state.epoch}, "
                           f"not {args.primary}")
    control = sites.control(args.primary)
    if control.role is not SiteRole.PRIMARY or control.epoch != state.epoch:
        raise ActionFailed(f"site {args.primary} is {control.role.value} at epoch {control.epoch}; the witness is at "
                           f"epoch {state.epoch}")
    run_id, divergence = _divergence(sites, args)
    return {"epoch": state.epoch, "failover_run": run_id, "applied": divergence.applied}


# -- steps ----------------------------------------------------------------------------------------------------------

def fence_old(ctx: ActionContext, args: RunArgs) -> dict:
    """The old primary's control row fenced (standby, intake fenced, `primary` named) at the witness's epoch unless
    it is fenced already: it never takes a write again before a switchover back. Resolves `failover_run`."""
    sites: Sites = ctx.services
    run_id, divergence = _divergence(sites, args)
    state = sites.witness.state()
    if state.primary_site == args.site:
        raise ActionFailed(f"the witness names {args.site} primary: it is not the old primary")
    control = sites.control(args.site)
    if control.intake_state is IntakeState.FENCED and control.role is SiteRole.STANDBY:
        return {"failover_run": run_id, "epoch": divergence.epoch, "already": True,
                "fenced_epoch": control.fenced_epoch}
    try:
        control = site_control.fence(sites.engine(args.site), args.site, epoch=state.epoch, primary_site=args.primary)
    except site_control.EpochMismatch as exc:
        raise ActionFailed(str(exc)) from None
    return {"failover_run": run_id, "epoch": divergence.epoch, "already": False, "fenced_epoch": control.fenced_epoch}


def quarantine(ctx: ActionContext, args: RunArgs) -> dict:
    """Every row the old primary wrote past the divergence point moved into its quarantine, its live row replaced
    by the primary's version (or deleted): one transaction per chunk, change capture off."""
    sites: Sites = ctx.services
    _, divergence = _divergence(sites, args)
    if _slot_gone(sites, args):  # a repeated run after reverse_stream dropped it: the tail was moved aside then
        held = quarantined(sites.engine(args.site, writer=False))
        if not held:
            raise ActionFailed(f"site {args.site}'s slot for {divergence.stream} is gone and its quarantine is "
                               f"empty: its lost tail can no longer be read")
        return {"tail_changes": None, "rows": len(held), "moved": 0, "skipped": len(held), "slot_gone": True}
    source = sites.change_source(args.site, args.primary)
    try:
        changes = unapplied_changes(source, divergence.positions, divergence.partitions)
    except ReplicationError as exc:
        raise ActionFailed(f"site {args.site}'s changes cannot be read: {exc}") from None
    finally:
        source.close()
    images = list(last_images(changes).values())
    old = apply_engine(sites.database_url(args.site))
    try:
        report = quarantine_tail(old, sites.engine(args.primary, writer=False), images, run_id=ctx.run_id,
                                 epoch=sites.control(args.site).epoch, clock=ctx.clock)
    finally:
        old.dispose()
    ctx.progress(f"{report.moved} rows moved aside ({report.skipped} already), {len(report.declarations)} "
                 f"declarations")
    try:  # at once, not only in reconcile: the old site must never issue a quarantined number again
        block = _reconciler(ctx, args, divergence).raise_block()
    except (PrimaryNotOpen, SQLAlchemyError) as exc:
        raise ActionFailed(f"the number block on {args.primary} could not be raised: {exc}") from None
    return {"tail_changes": len(changes), "rows": len(images), **report.as_dict(), "number_block": block}


def _slot_gone(sites: Sites, args: PairArgs) -> bool:
    """PostgreSQL: the old primary no longer has the slot of the stream old -> new (never True on SQLite, whose
    change log keeps the tail). Checked without creating one: a slot nobody reads keeps WAL forever."""
    url = sites.database_url(args.site)
    if not url.startswith("postgresql"):
        return False
    from replication.pg_source import PgChangeSource

    source = PgChangeSource(url, slot_name(args.site, args.primary))
    try:
        return not source.slot_exists()
    finally:
        source.close()


def reverse_stream(ctx: ActionContext, args: RunArgs) -> dict:
    """The stream old -> new retired (its PostgreSQL slot on the old primary would otherwise replay the quarantined
    tail into the primary at the next switchover), then the stream new -> old started on the old primary at the
    position the failover fixed before the primary's first write."""
    sites: Sites = ctx.services
    _, divergence = _divergence(sites, args)
    old_url, new_url = sites.database_url(args.site), sites.database_url(args.primary)
    retire_stream(old_url, new_url, divergence.stream)
    stream = divergence.reverse_stream or stream_name(args.primary, args.site)
    position = start_stream_at(old_url, stream, sites.partitions_into(args.site), divergence.reverse_start,
                               clock=ctx.clock)
    return {"stream": stream, "position": position, "retired": divergence.stream}


def replicate(ctx: ActionContext, args: ReplicateArgs) -> dict:
    """The stream new -> old's replicator process started (or found running), and the old primary caught up with
    what the primary has committed."""
    sites: Sites = ctx.services
    pid = sites.start_replicator(args.primary, args.site)
    sites.wait_replicating(args.primary, args.site, args.timeout_s)
    source = sites.change_source(args.primary, args.site)
    try:
        applied = wait_until_applied(source, sites.engine(args.site, writer=False),
                                     stream_name(args.primary, args.site), timeout_s=args.timeout_s, poll_s=0.05)
    except NotCaughtUp as exc:
        raise ActionFailed(str(exc)) from None
    finally:
        source.close()
    return {"pid": pid, "applied": applied}


def _reconciler(ctx: ActionContext, args: RunArgs, divergence: Divergence) -> Reconciler:
    sites: Sites = ctx.services
    return Reconciler(sites.engine(args.site), sites.engine(args.primary), sites.witness, args.site, args.primary,
                      sites.settings.site(args.site).site_digit, divergence.epoch, ctx.operator, ctx.run_id,
                      clock=ctx.clock)


def reconcile(ctx: ActionContext, args: RunArgs) -> dict:
    """Each quarantined declaration re-applied on the primary under its number, or listed as a conflict (the rule:
    cutover/reconcile.py); every decision audited in the witness under the operator."""
    sites: Sites = ctx.services
    _, divergence = _divergence(sites, args)
    try:
        report = _reconciler(ctx, args, divergence).run()
    except (PrimaryNotOpen, SQLAlchemyError) as exc:  # e.g. the primary froze meanwhile: the run can be resumed
        raise ActionFailed(f"reconcile stopped: {exc}") from None
    for conflict in report.conflicts:
        ctx.progress(f"conflict: {conflict['what']}: {conflict['reason']}")
    return report.as_dict()


def report(ctx: ActionContext, args: PairArgs) -> dict:
    """What the quarantine holds by status, the conflicts to review, and the check the failback promises: every
    quarantined declaration is on the primary unless it is listed as a conflict."""
    sites: Sites = ctx.services
    rows = quarantined(sites.engine(args.site, writer=False))
    groups, others = group_rows(rows)
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status.value] = by_status.get(row.status.value, 0) + 1
    numbers = sorted({g.number for g in groups if g.number and any(r.table == "declarations" and r.row
                                                                   for r in g.rows)})
    conflicts = [{"what": g.label, "number": g.number, "reason": g.rows[0].decision} for g in groups
                 if all(r.status is QuarantineStatus.CONFLICT for r in g.rows)]
    listed = {c["number"] for c in conflicts}
    with sites.engine(args.primary, writer=False).connect() as conn:
        there = set(conn.execute(select(declarations.c.base)
                                 .where(declarations.c.base.in_([n[:11] for n in numbers]))).scalars())
    missing = [n for n in numbers if n[:11] not in there and n not in listed]
    result = {"quarantined": len(rows), "by_status": by_status, "declarations": len(numbers),
              "conflicts": conflicts, "missing_from_primary": missing, "kept": len(others),
              "next": f"standbyctl runbook run switchover --param from={args.primary} --param to={args.site}"}
    if missing:
        raise ActionFailed(f"{len(missing)} quarantined declarations are neither on {args.primary} nor listed as "
                           f"conflicts: {', '.join(missing[:10])}; run the reconcile step again")
    return result


def register(registry: ActionRegistry) -> ActionRegistry:
    """Add the failback's actions to `registry` (their services must be a Sites)."""
    return registry.register_table(ACTIONS)


ACTIONS = {
    "failback.primary_is_current": (primary_is_current, RunArgs, True,
                                    "the witness names the primary; the failover recorded its divergence"),
    "failback.fence_old": (fence_old, RunArgs, False, "fence the old primary's control row (standby, fenced)"),
    "failback.quarantine": (quarantine, RunArgs, False, "move the old primary's divergent rows aside"),
    "failback.reverse_stream": (reverse_stream, RunArgs, False, "start the stream new -> old at the failover's start"),
    "failback.replicate": (replicate, ReplicateArgs, False, "start the replicator new -> old; wait until caught up"),
    "failback.reconcile": (reconcile, RunArgs, False, "re-apply or list each quarantined declaration; audited"),
    "failback.report": (report, PairArgs, True, "the quarantine by status; nothing missing unless a conflict"),
}
