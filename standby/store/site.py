"""The site's control row: its role, epoch and intake state. Every write checks it in its own transaction."""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update

from standby.domain.states import IntakeState, SiteRole, next_intake_state
from standby.store.schema import site_control


@dataclass(frozen=True)
class SiteControl:
    site_id: str
    role: SiteRole
    epoch: int
    intake_state: IntakeState
    primary_site: str | None
    updated_at: float


def init_site(engine: Engine, site_id: str, role: SiteRole, primary_site: str | None = None, epoch: int = 1,
              now: float | None = None) -> SiteControl:
    """Create the control row if the database has none; an existing row is left as it is and returned."""
    existing = read_control(engine, site_id)
    if existing:
        return existing
    primary = site_id if role is SiteRole.PRIMARY else primary_site
    with engine.begin() as conn:
        conn.execute(insert(site_control).values(
            site_id=site_id, role=role.value, epoch=epoch, intake_state=IntakeState.OPEN.value, primary_site=primary,
            updated_at=now if now is not None else time.time()))
    return read_control(engine, site_id)


def read_control(engine: Engine, site_id: str) -> SiteControl | None:
    with engine.connect() as conn:
        row = conn.execute(select(site_control).where(site_control.c.site_id == site_id)).mappings().first()
    if row is None:
        return None
    return SiteControl(row["site_id"], SiteRole(row["role"]), row["epoch"], IntakeState(row["intake_state"]),
                       row["primary_site"], row["updated_at"])


def set_intake(engine: Engine, site_id: str, target: IntakeState, now: float | None = None) -> SiteControl:
    """Move intake through its transition table (an illegal move raises before anything is written)."""
    with engine.begin() as conn:
        current = conn.execute(select(site_control.c.intake_state).where(site_control.c.site_id == site_id)).scalar()
        if current is None:
            raise LookupError(f"site {site_id} has no control row")
        next_intake_state(IntakeState(current), target)
        conn.execute(update(site_control).where(site_control.c.site_id == site_id).values(
            intake_state=target.value, updated_at=now if now is not None else time.time()))
    return read_control(engine, site_id)
