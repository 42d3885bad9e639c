"""The primary's heartbeat: a row the replicator updates every fraction of a second and that replicates like any
other, so the standby's lag is visible even when no declarations are written."""
from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from standby.store.engine import is_sqlite
from standby.store.schema import replication_heartbeat


def write_heartbeat(engine: Engine, source: str, now: float) -> None:
    dialect = sqlite if is_sqlite(engine) else postgresql
    stmt = dialect.insert(replication_heartbeat).values(source=source, at=now, counter=1)
    stmt = stmt.on_conflict_do_update(index_elements=["source"],
                                      set_={"at": now, "counter": replication_heartbeat.c.counter + 1})
    with engine.begin() as conn:
        conn.execute(stmt)
