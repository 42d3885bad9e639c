"""The failover's actions: the primary is gone, the standby takes over with what it has applied, and the report
names every acknowledged declaration it never got (runbooks/failover.yaml; the operator's page is failover.md).

Order: preconditions (the witness names the old primary; the standby answers and its database is readable; the old
primary is fenced: its lease in the witness expired or the epoch moved past it) → stop_stream (the replicator into
the standby is stopped and the standby's per-partition applied positions recorded: the divergence point) →
bump_epoch (witness CAS, point of no return) → promote → reverse_start (where the new primary's own changes start,
fixed before it takes a write) → resume (intake opens; the front routes to the new primary) → fence_old (best
effort) → report (the RPO by declaration number, cutover.rpo).

Every action is idempotent: a run resumed after kill -9 repeats its last step and reaches the same state. The
decisions (is the old primary fenced? what does a repeated bump find?) are pure functions below, unit-tested."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from cutover.actions.failover_journal import divergence_of, step_result
from cutover.actions.sites import Sites, find_replicator, running_replicator
from cutover.rpo import RATE_WINDOW_S, compute_report, database_problem, describe
from cutover.runbook.actions import ActionArgs, ActionContext, ActionFailed, ActionRegistry
from cutover.witness.contract import LeaseHeld, StaleEpoch, WitnessState
from cutover.witness.lease import lease_expired
from replication.apply import Applier
from replication.sources import slot_name, stream_name
from replication.streams import fix_start
from standby.domain.states import IntakeState, SiteRole
from standby.store import site as site_control
from standby.store.schema import declarations, replication_state


class PairArgs(ActionArgs):
    primary: str = Field(description="the old primary (gone)")
    standby: str = Field(description="the standby that takes over")


class StopArgs(PairArgs):
    timeout_s: float = Field(10.0, gt=0, le=600, description="how long to wait for the replicator to be gone")


class BumpArgs(PairArgs):
    expected_epoch: int = Field(ge=1, description="the epoch the old primary served under (from stop_stream)")


class FenceArgs(PairArgs):
    epoch: int = Field(ge=1)


class ReportArgs(PairArgs):
    pass


# -- pure decisions -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FencedVerdict:
    fenced: bool
    reason: str


def old_primary_fenced(state: WitnessState, old: str, now: float, old_epoch: int | None = None,
                       old_fenced: bool = False) -> FencedVerdict:
    """Pure: may `old`'s role be taken? Yes once the epoch moved past it (the witness names another epoch than the
    one its control row serves under, or its row is fenced) or its lease in the witness has expired
    (`cutover.witness.lease.lease_expired`). `old_epoch`/`old_fenced` come from its control row when readable."""
    if old_fenced or (old_epoch is not None and old_epoch < state.epoch):
        return FencedVerdict(True, f"site {old}'s epoch {old_epoch} is behind the witness's {state.epoch}")
    if lease_expired(state, now):
        held = "holds no lease" if state.lease_expires_at is None else \
            f"lease expired at {_utc(state.lease_expires_at)} ({now - state.lease_expires_at:.1f} s ago)"
        return FencedVerdict(True, f"site {old} {held}")
    return FencedVerdict(False, (
        f"the old primary may still be writing: site {old}'s lease in the witness runs until "
        f"{_utc(state.lease_expires_at)} (in {state.lease_expires_at - now:.1f} s); wait until then, or use the "
        f"switchover runbook if {old} is alive"))


def bump_decision(state: WitnessState, standby: str, expected_epoch: int) -> str:
    """Pure: "done" when the witness already names `standby` at expected_epoch + 1 (a resumed run), "promote" when
    it is still at `expected_epoch`, else "moved" (someone else promoted meanwhile)."""
    if state.primary_site == standby and state.epoch == expected_epoch + 1:
        return "done"
    if state.epoch == expected_epoch:
        return "promote"
    return "moved"


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S.%f")[:-3] + " UTC"


# -- preconditions (read-only) ------------------------------------------------------------------------------------

def primary_is(ctx: ActionContext, args: PairArgs) -> dict:
    """The witness names `primary` (the old one) primary, and `standby` is another configured site."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    if args.primary == args.standby:
        raise ActionFailed(f"from and to are both {args.primary}")
    if state.primary_site != args.primary:
        raise ActionFailed(f"the witness names site {state.primary_site or 'none'} primary at epoch {state.epoch}, "
                           f"not {args.primary}: nothing to fail over from")
    return {"epoch": state.epoch}


def standby_ready(ctx: ActionContext, args: PairArgs) -> dict:
    """The standby's database is readable, it is a standby, and it has the stream from the old primary."""
    sites: Sites = ctx.services
    problem = database_problem(sites.database_url(args.standby))
    if problem:
        raise ActionFailed(f"site {args.standby}'s database cannot be read: {problem}")
    control = sites.control(args.standby)
    if control.role is not SiteRole.STANDBY:
        raise ActionFailed(f"site {args.standby} is {control.role.value}, not a standby")
    positions = Applier(sites.engine(args.standby, writer=False)).positions(stream_name(args.primary, args.standby))
    if not positions:
        raise ActionFailed(f"site {args.standby} has no stream {stream_name(args.primary, args.standby)}: it never "
                           f"replicated from {args.primary}, so promoting it would lose everything")
    return {"applied": min(positions.values())}


def old_fenced(ctx: ActionContext, args: PairArgs) -> dict:
    """The old primary is fenced: its lease in the witness expired, or the epoch moved past it. Its control row is
    read only when its database can be read (a dead site's database may not)."""
    sites: Sites = ctx.services
    state, now = sites.witness.state(), ctx.clock()
    control = None if database_problem(sites.database_url(args.primary), timeout_s=1) else \
        sites.control(args.primary)
    verdict = old_primary_fenced(state, args.primary, now, control.epoch if control else None,
                                 control is not None and control.intake_state is IntakeState.FENCED)
    if not verdict.fenced:
        raise ActionFailed(verdict.reason)
    return {"reason": verdict.reason}


# -- steps ----------------------------------------------------------------------------------------------------------

def _replicator_pid(sites: Sites, primary: str, standby: str) -> int | None:
    pid_file = sites.settings.path(sites.settings.data_dir) / f"replicate-{stream_name(primary, standby)}.pid"
    found = running_replicator(pid_file)
    if found is None and sites.config_path is not None:
        found = find_replicator(sites.config_path, primary, standby)
    return found


def _kill(pid: int) -> None:
    """SIGKILL the replicator (its process group when it leads one: its Ray driver's children go with it)."""
    try:
        os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _settled_positions(ctx: ActionContext, applier: Applier, stream: str, timeout_s: float,
                       quiet_s: float = 0.5) -> dict[int, int]:
    """The stream's positions once they stop moving for `quiet_s`: the replicator's apply workers are Ray actors
    that may commit the window they were given after their driver died (they die with it, within about a second)."""
    seen = {"positions": applier.positions(stream)}

    def moved() -> bool:
        ctx.sleep(quiet_s)
        now = applier.positions(stream)
        changed, seen["positions"] = now != seen["positions"], now
        return changed
    Retrying(retry=retry_if_result(bool), stop=stop_after_delay(timeout_s), sleep=ctx.sleep,
             retry_error_callback=lambda _state: True)(moved)
    return seen["positions"]


def stop_stream(ctx: ActionContext, args: StopArgs) -> dict:
    """Stop the replicator into the standby (killed, waited for until gone) so nothing more is applied, then record
    the standby's per-partition applied positions of the stream: the divergence point. Also recorded, for the RPO
    estimate when the old database cannot be read: the newest old-primary heartbeat applied, the last moment the
    old primary could write (its lease's self-fencing deadline) and the standby's recent declaration rate."""
    sites: Sites = ctx.services
    killed: list[int] = []

    def gone() -> bool:
        pid = _replicator_pid(sites, args.primary, args.standby)
        if pid is None:
            return True
        _kill(pid)
        killed.append(pid)
        return False
    stopped = Retrying(retry=retry_if_result(lambda ok: not ok), wait=wait_fixed(0.05), sleep=ctx.sleep,
                       stop=stop_after_delay(args.timeout_s), retry_error_callback=lambda _state: False)(gone)
    if not stopped:
        raise ActionFailed(f"the replicator {stream_name(args.primary, args.standby)} (pid {killed[-1]}) is still "
                           f"running after {args.timeout_s:g} s")
    stream = stream_name(args.primary, args.standby)
    positions = _settled_positions(ctx, Applier(sites.engine(args.standby, writer=False)), stream, args.timeout_s)
    ctx.progress(f"stream {stream} stopped at positions {positions}" + (f"; killed pid {sorted(set(killed))}"
                                                                        if killed else ""))
    # The replicator keeps one position per partition: their count is the partitioning the divergence needs.
    return {"stream": stream, "partitions": len(positions) or sites.partitions_into(args.standby),
            "positions": {str(p): v for p, v in positions.items()}, "applied": min(positions.values(), default=0),
            "killed": sorted(set(killed)), **_estimate_inputs(ctx, sites, args.standby, stream)}


def _estimate_inputs(ctx: ActionContext, sites: Sites, standby: str, stream: str) -> dict:
    """What the RPO estimate needs if the old primary's database cannot be read (cutover.rpo.in_flight_estimate),
    and the witness's epoch, read before the bump (which clears the lease)."""
    with sites.engine(standby, writer=False).connect() as conn:
        heartbeat_at = conn.execute(select(func.max(replication_state.c.heartbeat_at))
                                    .where(replication_state.c.stream == stream)).scalar()
        recent = 0 if heartbeat_at is None else conn.execute(
            select(func.count()).select_from(declarations).where(
                declarations.c.updated_at > heartbeat_at - RATE_WINDOW_S,
                declarations.c.updated_at <= heartbeat_at)).scalar()
    state = sites.witness.state()
    lease_end = state.lease_expires_at
    last_write = (lease_end - sites.settings.lease.fence_margin_s) if lease_end is not None else ctx.clock()
    return {"epoch": state.epoch, "heartbeat_at": heartbeat_at, "last_write_at": last_write,
            "lease_expires_at": lease_end, "rate_per_s": round(recent / RATE_WINDOW_S, 3)}


def bump_epoch(ctx: ActionContext, args: BumpArgs) -> dict:
    """Witness CAS: `standby` primary at expected_epoch + 1 (the lease is cleared; the old primary's next renewal
    answers StaleEpoch). A resumed run that finds it done says so. The witness's CAS itself requires the old
    primary's lease to be gone (`lease_expired_by`), in the same transaction: a primary that renewed since the
    precondition is never replaced under it (LeaseHeld: nothing changed, the step fails and can be retried)."""
    sites: Sites = ctx.services
    state = sites.witness.state()
    decision = bump_decision(state, args.standby, args.expected_epoch)
    if decision == "moved":
        raise ActionFailed(f"the witness moved on: site {state.primary_site} is primary at epoch {state.epoch}, "
                           f"not {args.primary} at {args.expected_epoch}")
    if decision == "promote":
        verdict = old_primary_fenced(state, args.primary, ctx.clock())
        if not verdict.fenced:
            raise ActionFailed(verdict.reason)
        try:
            state = sites.witness.promote(args.standby, args.expected_epoch, lease_expired_by=ctx.clock())
        except LeaseHeld as exc:
            raise ActionFailed(f"{exc}; the old primary renewed its lease: it is alive, use the switchover "
                               f"runbook, or wait until it cannot renew") from None
        except StaleEpoch as exc:
            state = sites.witness.state()  # a lost acknowledgement of our own CAS reads as done
            if bump_decision(state, args.standby, args.expected_epoch) != "done":
                raise ActionFailed(f"the witness moved on: {exc}") from None
    return {"epoch": state.epoch, "primary": args.standby}


def reverse_start(ctx: ActionContext, args: PairArgs) -> dict:
    """Fix where the new primary's own changes start (its change log's counter; on PostgreSQL its slot for the
    stream back, created now), before it takes a write. `primary` here is the NEW primary, `standby` the old.

    Runs only while the new primary is frozen: it has taken no write of its own yet, so on PostgreSQL a slot of the
    stream already there (left by an older stream, or by this step's attempt before a crash) is dropped and made
    afresh: an old one would replay what the site applied as a standby, and nothing of its own can be missed."""
    sites: Sites = ctx.services
    stream = stream_name(args.primary, args.standby)
    url = sites.database_url(args.primary)
    control = sites.control(args.primary)
    if control.intake_state is IntakeState.OPEN:
        raise ActionFailed(f"site {args.primary} is open already: its first writes may precede the start")
    if make_url(url).get_backend_name() == "postgresql":
        from replication.pg_source import PgChangeSource

        source = PgChangeSource(url, slot_name(args.primary, args.standby))
        try:
            source.drop_slot(missing_ok=True)
        finally:
            source.close()
    return {"stream": stream, "position": fix_start(url, stream)}


def fence_old(ctx: ActionContext, args: FenceArgs) -> dict:
    """Best effort: fence the old primary's control row at the new epoch if its database can be read. Never fails:
    the new epoch in the witness already fences it (its renewals and its gate answer stale_epoch), and the failback
    fences it anyway."""
    sites: Sites = ctx.services
    problem = database_problem(sites.database_url(args.primary), timeout_s=1)
    if problem:
        ctx.progress(f"site {args.primary} not fenced in its own database: {problem}")
        return {"fenced": False, "reason": problem}
    try:
        site_control.fence(sites.engine(args.primary), args.primary, epoch=args.epoch, primary_site=args.standby)
    except Exception as exc:  # noqa: BLE001 - best effort by contract: any failure is reported, not raised
        return {"fenced": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"fenced": True}


def report(ctx: ActionContext, args: ReportArgs) -> dict:
    """The RPO report (cutover.rpo): exact when the old primary's database can be read, else the estimate."""
    sites: Sites = ctx.services
    divergence = divergence_of(sites.witness, ctx.run_id)
    stop = step_result(sites.witness.entries(ctx.run_id), "stop_stream") or {}
    result = compute_report(sites.database_url(args.primary), sites.engine(args.standby, writer=False), divergence,
                            stop)
    ctx.progress(describe(result))
    return result


def register(registry: ActionRegistry) -> ActionRegistry:
    """Add the failover's actions to `registry` (their services must be a Sites). The runbook also uses the
    switchover's `promote`, `resume_intake` and `reachable`, which do the same there."""
    return registry.register_table(ACTIONS)


ACTIONS = {
    "failover.primary_is": (primary_is, PairArgs, True, "the witness names the old primary"),
    "failover.standby_ready": (standby_ready, PairArgs, True, "the standby's database is readable and replicated"),
    "failover.old_fenced": (old_fenced, PairArgs, True, "the old primary's lease expired or its epoch moved"),
    "failover.stop_stream": (stop_stream, StopArgs, False, "stop the replicator; record the divergence point"),
    "failover.bump_epoch": (bump_epoch, BumpArgs, False, "witness epoch + 1 for the standby (CAS)"),
    "failover.reverse_start": (reverse_start, PairArgs, False, "fix where the new primary's changes start"),
    "failover.fence_old": (fence_old, FenceArgs, False, "fence the old primary's control row if reachable"),
    "failover.report": (report, ReportArgs, True, "the RPO: lost declarations by number"),
}
