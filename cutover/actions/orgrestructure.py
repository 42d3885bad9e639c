"""The org restructure's actions (runbooks/org-restructure.yaml and org-rollback.yaml; the operator's page is
org-restructure.md): an org change set applied on the primary with intake frozen only for the switch, and reaching
the standby by replication.

Order: preconditions (the witness names the primary; the change set is valid and not active yet) → prepare (online,
intake open: successors loaded, every live record's new codes computed beside it) → freeze → switch (the delta since
prepare, the check, the move and the new active map in one transaction) → resume → standby_follows (the standby has
applied the switch and reports the new map) → postcheck (verify finds both sites equal). The rollback runbook
freezes, rolls back in one transaction, resumes and checks the same way.

Through a switchover (org-restructure-via-switchover.yaml) the standby prepares and switches first, while the
primary keeps its intake open (its applier then moves the rows that still arrive on the old map); the switchover's
own steps follow, so the primary freezes only for the switchover; then the old primary, now a standby, moves its
own records (switch_old_primary) and verify finds both sites equal. Every action is idempotent: a switch or a
rollback already done is reported as such, so a resumed run repeats its last step and reaches the same state.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from cutover.actions.sites import Sites
from cutover.actions.switchover import CatchUpArgs, wait_caught_up
from cutover.orgchange.loader import load_changeset
from cutover.orgchange.resolve import Resolver
from cutover.orgchange.spec import ChangeSet
from cutover.orgchange.switch import (
    AlreadyActive,
    SwitchRefused,
    prepare,
    rollback,
    stop_moving,
    switch,
    target_version,
)
from cutover.orgchange.validate import validate
from cutover.runbook.actions import ActionArgs, ActionContext, ActionFailed, ActionRegistry
from standby.store.orgmap import active_map

SHIPPED = "config/changesets/vn-2025-two-tier/changeset.yaml"


class ChangeSetArgs(ActionArgs):
    site: str = Field(description="the primary whose records the change set moves")
    changeset: str = Field(SHIPPED, description="the change set's manifest (relative to the settings' root)")


class ReadyArgs(ChangeSetArgs):
    allow_active: bool = Field(False, description="also hold when the change set is already active on the site (a "
                                                  "runbook that switches it before the precondition is checked again)")


class SwitchArgs(ChangeSetArgs):
    ahead_of_primary: bool = Field(False, description="the site is a standby switching before its primary (through a "
                                                      "switchover): its applier moves rows arriving on the old map")


class OldPrimaryArgs(ChangeSetArgs):
    primary: str = Field(description="the new primary, already on the change set's map")


class FollowArgs(ChangeSetArgs):
    standby: str = Field(description="the standby that must follow the primary's map")
    active: bool = Field(True, description="whether the change set must be active (false: after a rollback)")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="how long the standby may take to apply it")


def _changeset(sites: Sites, path: str) -> ChangeSet:
    return _load(sites.settings.path(Path(path)))


@lru_cache(maxsize=4)
def _load(path: Path) -> ChangeSet:
    """The change set at `path`, refused (ActionFailed naming the bad rows) unless it loads and validates."""
    try:
        changeset, problems = load_changeset(path)
    except (OSError, ValueError) as exc:
        raise ActionFailed(f"change set {path} cannot be read: {exc}") from None
    problems = problems or validate(changeset)
    if problems:
        raise ActionFailed(f"change set {path} is refused ({len(problems)} bad rows; `standbyctl orgchange validate` "
                           f"lists them), first: " + "; ".join(str(p) for p in problems[:3]))
    return changeset


def _map(sites: Sites, site: str):
    with sites.engine(site, writer=False).connect() as conn:
        return active_map(conn)


# -- preconditions ---------------------------------------------------------------------------------------------------

def changeset_ready(ctx: ActionContext, args: ReadyArgs) -> dict:
    """The change set validates and the site's active map is older than its target (not applied yet), or, with
    `allow_active`, is the change set itself."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    state, target = _map(sites, args.site), target_version(changeset)
    if args.allow_active and state.changeset_id == changeset.manifest.id:
        return {"changeset": changeset.manifest.id, "already_active": True}
    if state.active_version >= target:
        raise ActionFailed(f"site {args.site} already has map {state.active_version} active (change set "
                           f"{state.changeset_id or 'none'}); to undo a change set run the org-rollback runbook")
    return {"changeset": changeset.manifest.id, "from": state.active_version.isoformat(), "to": target.isoformat()}


def rollback_ready(ctx: ActionContext, args: ChangeSetArgs) -> dict:
    """The change set is the site's active map, so there is something to roll back."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    state = _map(sites, args.site)
    if state.changeset_id != changeset.manifest.id:
        raise ActionFailed(f"change set {changeset.manifest.id} is not active on site {args.site} (active: map "
                           f"{state.active_version}, change set {state.changeset_id or 'none'})")
    return {"changeset": changeset.manifest.id, "from": state.active_version.isoformat(),
            "to": state.previous_version.isoformat() if state.previous_version else None}


# -- steps -------------------------------------------------------------------------------------------------------------

def prepare_records(ctx: ActionContext, args: ChangeSetArgs) -> dict:
    """Online: load the successors and compute every live record's new codes beside it."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    try:
        report = prepare(sites.engine(args.site), changeset, clock=ctx.monotonic)
    except AlreadyActive:
        return {"already_active": True}
    except SwitchRefused as exc:
        raise ActionFailed(str(exc)) from None
    ctx.progress(f"prepared {_counts(report.prepared)} in {report.seconds:.2f} s")
    return report.as_dict()


def switch_map(ctx: ActionContext, args: SwitchArgs) -> dict:
    """Intake frozen: the delta, the check and the move in one transaction; the target map becomes active."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    try:
        report = switch(sites.engine(args.site), changeset, Resolver(changeset), now=ctx.clock(),
                        ahead_of_primary=args.ahead_of_primary, clock=ctx.monotonic)
    except AlreadyActive:
        return {"already_active": True}  # a resumed run: the switch committed before the run was stopped
    except SwitchRefused as exc:
        raise ActionFailed(str(exc)) from None
    ctx.progress(f"switched to map {report.target_version}: delta {_counts(report.delta)}, moved "
                 f"{_counts(report.moved)}, flagged for review {_counts(report.flagged)}, in {report.seconds:.2f} s")
    return report.as_dict()


def rollback_map(ctx: ActionContext, args: ChangeSetArgs) -> dict:
    """Intake frozen: every record the change set moved gets its previous codes back; the previous map is active."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    state = _map(sites, args.site)
    if state.changeset_id != changeset.manifest.id and state.active_version < target_version(changeset):
        return {"already_rolled_back": True, "active": state.active_version.isoformat()}
    try:
        report = rollback(sites.engine(args.site), changeset, now=ctx.clock(), clock=ctx.monotonic)
    except SwitchRefused as exc:
        raise ActionFailed(str(exc)) from None
    ctx.progress(f"rolled back to map {report.target_version}: restored {_counts(report.moved)}")
    return report.as_dict()


def switch_old_primary(ctx: ActionContext, args: OldPrimaryArgs) -> dict:
    """After the switchover: the old primary (now a standby, intake fenced) moves its own records to the new map,
    stamped with the new primary's switch time so both sites hold the same rows; the new primary's applier stops
    moving arriving rows (nothing arrives there any more)."""
    sites: Sites = ctx.services
    changeset = _changeset(sites, args.changeset)
    switched = _map(sites, args.primary)
    if switched.changeset_id != changeset.manifest.id or switched.switched_at is None:
        raise ActionFailed(f"site {args.primary} does not have change set {changeset.manifest.id} active")
    try:
        report = switch(sites.engine(args.site), changeset, Resolver(changeset), now=switched.switched_at,
                        clock=ctx.monotonic)
        result = report.as_dict()
        ctx.progress(f"site {args.site} moved {_counts(report.moved)} in {report.seconds:.2f} s")
    except AlreadyActive:
        result = {"already_active": True}
    except SwitchRefused as exc:
        raise ActionFailed(str(exc)) from None
    stop_moving(sites.engine(args.primary))
    return result


def standby_follows(ctx: ActionContext, args: FollowArgs) -> dict:
    """The standby has applied the primary's last commit, and with it reports the primary's active map."""
    sites: Sites = ctx.services
    caught_up = wait_caught_up(ctx, CatchUpArgs(primary=args.site, standby=args.standby, timeout_s=args.timeout_s))
    primary, standby = _map(sites, args.site), _map(sites, args.standby)
    target = target_version(_changeset(sites, args.changeset))
    if (primary.active_version == target) != args.active:
        raise ActionFailed(f"site {args.site} has map {primary.active_version} active; expected the change set "
                           f"{'active' if args.active else 'rolled back'}")
    if standby.active_version != primary.active_version:
        raise ActionFailed(f"site {args.standby} reports map {standby.active_version}, the primary "
                           f"{primary.active_version}, after applying position {caught_up['applied']}")
    return {"active": standby.active_version.isoformat(), **caught_up}


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {name}s" for name, n in counts.items()) or "nothing"


def register(registry: ActionRegistry) -> ActionRegistry:
    """Add the org restructure's actions to `registry` (their services must be a Sites)."""
    return registry.register_table(ACTIONS)


ACTIONS = {
    "orgchange.changeset_ready": (changeset_ready, ReadyArgs, True,
                                  "the change set validates and is not active on the site yet"),
    "orgchange.rollback_ready": (rollback_ready, ChangeSetArgs, True, "the change set is the site's active map"),
    "orgchange.prepare": (prepare_records, ChangeSetArgs, False,
                          "online: load the successors, compute every live record's new codes"),
    "orgchange.switch": (switch_map, SwitchArgs, False,
                         "frozen: delta, check, move the records and activate the map in one transaction"),
    "orgchange.rollback": (rollback_map, ChangeSetArgs, False,
                           "frozen: restore the previous codes and the previous map in one transaction"),
    "orgchange.switch_old_primary": (switch_old_primary, OldPrimaryArgs, False,
                                     "after the switchover: the old primary's records moved, stamped like the new's"),
    "orgchange.standby_follows": (standby_follows, FollowArgs, True,
                                  "the standby applied the switch and reports the primary's map"),
}

