"""Reference data a worker reads on every batch, held in memory and reloaded when a code is missing."""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, select

from standby.store.schema import customs_offices, officers

RELOAD_INTERVAL_S = 5.0


class ReferenceCache:
    """Offices and each office section's active officers in rotation order.

    `refresh()` reloads when the data is older than a few seconds (so an officer registered by an operator is in
    rotation within that time); call it outside any write transaction. The getters never touch the database."""

    def __init__(self, engine: Engine, clock: Callable[[], float]):
        self._engine, self._clock = engine, clock
        self._loaded_at = float("-inf")
        self._offices: frozenset[str] = frozenset()
        self._officers: dict[tuple[str, str], list[str]] = {}

    def refresh(self) -> None:
        if self._clock() - self._loaded_at < RELOAD_INTERVAL_S:
            return
        with self._engine.connect() as conn:
            self._offices = frozenset(conn.execute(select(customs_offices.c.code)).scalars())
            rotation: dict[tuple[str, str], list[str]] = {}
            query = select(officers.c.office_code, officers.c.section, officers.c.officer_id).where(
                officers.c.active.is_(True)).order_by(officers.c.office_code, officers.c.section, officers.c.position)
            for office, section, officer in conn.execute(query):
                rotation.setdefault((office, section), []).append(officer)
        self._officers, self._loaded_at = rotation, self._clock()

    def offices(self) -> frozenset[str]:
        return self._offices

    def officers(self, office: str, section: str) -> list[str]:
        return self._officers.get((office, section), [])
