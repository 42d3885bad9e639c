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
        if not is_sqlite(engine):
            # Logical decoding sees only WAL flushed to disk; a synchronous commit makes the beat (and every commit
            # before it) visible to the stream at once, even where synchronous_commit is off.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
        conn.execute(stmt)
