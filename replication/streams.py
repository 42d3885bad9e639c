"""Starting and ending a stream without a snapshot: the reverse stream of a switchover, and the stream it replaces.

After a switchover the new primary's rows equal the old primary's, so the reverse stream (new primary -> old) copies
nothing: `prepare_stream` fixes its start at the new primary's current committed position and records it on the
target (the old primary) for every partition. It runs before intake resumes on the new primary, so every write the
new primary takes is after the start and is streamed; the replicator may start any time later and resumes from
these positions (`Replicator.start` takes no snapshot when every partition has a position).

`start_stream_at` records a start the caller fixed earlier on the source (the failback's stream new primary -> old
primary starts where the failover noted the new primary's position before its first write).

`retire_stream` ends a finished stream (its source is no longer primary and everything it committed is applied):
the PostgreSQL slot is dropped (a slot nobody reads keeps WAL on its database forever) and the target forgets the
stream's positions, so a later stream between the same two sites is prepared afresh.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.engine import make_url

from replication.errors import ReplicationError
from replication.sources import slot_name, stream_sites
from standby.store.engine import make_engine
from standby.store.schema import change_log, replication_state


class StreamConflict(ReplicationError):
    """The target already has the stream at positions a fresh start would contradict."""


def decide_start(existing: dict[int, int], partitions: int, start: int, *, replace: bool,
                 continues: Callable[[int], bool]) -> tuple[str, int]:
    """Pure: ("write", start) to record `start` for every partition, or ("keep", lowest) when the target already
    has the stream and nothing would be lost by keeping it: every partition at `start` (a re-run), or the source
    still holds every change after the target's lowest position (`continues(lowest)`: prepared earlier, then
    streamed on). Anything else raises StreamConflict, unless `replace`."""
    if not existing or replace:
        return "write", start
    if sorted(existing) != list(range(partitions)):
        raise StreamConflict(f"the target has this stream with partitions {sorted(existing)}, not {partitions}; "
                             f"keep the same count, or retire the stream first")
    lowest = min(existing.values())
    if set(existing.values()) == {start} or continues(lowest):
        return "keep", lowest
    raise StreamConflict(f"the target already has this stream at position {lowest}, but the source's committed "
                         f"position is {start} and the changes in between are not held: retire the old stream "
                         f"(or pass replace=True if the two databases are known to be equal)")


def prepare_stream(source_url: str, target_url: str, stream: str, partitions: int, *, replace: bool = False,
                   clock: Callable[[], float] = time.time) -> int:
    """Record the start of `stream` (source -> target) on the target without a snapshot and return it.

    SQLite: the source's change-log counter (everything logged so far is already on the target). PostgreSQL: the
    stream's logical slot is created on the source and its consistent point is the start (an existing slot of the
    stream is kept, at its confirmed position). Idempotent: a re-run returns the same position; if the target has
    the stream at another position see `decide_start`. Both databases must hold equal replicated rows (the caller's
    promise: the old stream had caught up and the source has taken no write since)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    target = make_engine(target_url)
    try:
        existing = _positions(target, stream)
        on_pg = make_url(source_url).get_backend_name() == "postgresql"
        start, continues = _start(source_url, stream)
        action, position = decide_start(existing, partitions, start, replace=replace, continues=continues)
        if action == "write":
            _write_positions(target, stream, partitions, position, clock())
        if not on_pg:  # the log's rows up to the start are on the target already: the stream will never read them
            _prune(source_url, position)
        return position
    finally:
        target.dispose()


def fix_start(source_url: str, stream: str) -> int:
    """Fix where `stream` starts on its source, now, without touching any target, and return it: SQLite, the
    change log's counter; PostgreSQL, the stream's slot (created now, or kept at its confirmed position). A failover
    calls it on the new primary before it takes a write, so the stream back to the old primary misses none; the
    failback starts that stream from here. Idempotent: nothing is written on SQLite, the slot is kept on PostgreSQL."""
    return _start(source_url, stream)[0]


def _start(source_url: str, stream: str) -> tuple[int, Callable[[int], bool]]:
    on_pg = make_url(source_url).get_backend_name() == "postgresql"
    return _pg_start(source_url, stream) if on_pg else _sqlite_start(source_url)


def start_stream_at(target_url: str, stream: str, partitions: int, position: int, *,
                    clock: Callable[[], float] = time.time) -> int:
    """Record on the target that `stream` starts at `position`, a start fixed earlier on the source (a failover
    notes the new primary's position before it takes a write) and return the position the stream resumes from.

    The caller promises that the target's replicated rows equal the source's as of `position` (the failback moved
    what only the target had aside first). Idempotent: when the target already holds the stream at or past
    `position` in every partition (a re-run, or the replicator has streamed on since) it is kept; positions below
    `position` or of another partition count are an older stream's and are replaced. Nothing is read from the
    source, so on PostgreSQL its slot must already exist (the failover created it)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    target = make_engine(target_url)
    try:
        action, at = decide_start_at(_positions(target, stream), partitions, position)
        if action == "write":
            _write_positions(target, stream, partitions, at, clock())
        return at
    finally:
        target.dispose()


def decide_start_at(existing: dict[int, int], partitions: int, position: int) -> tuple[str, int]:
    """Pure: ("keep", lowest) when the target holds the stream at or past `position` in every partition (a re-run,
    or the replicator streamed on since), else ("write", position): no positions yet, or an older stream's (below
    `position`, or of another partition count), which the fixed start replaces."""
    stale = bool(existing) and (sorted(existing) != list(range(partitions)) or min(existing.values()) < position)
    return decide_start(existing, partitions, position, replace=stale, continues=lambda lowest: lowest >= position)


def retire_stream(source_url: str, target_url: str, stream: str) -> None:
    """End a finished stream: drop its PostgreSQL slot on the source (if any), then delete its positions on the
    target. Idempotent; in this order, so a crash in between leaves positions that `prepare_stream` refuses rather
    than a slot that would replay the source's history."""
    if make_url(source_url).get_backend_name() == "postgresql":
        from replication.pg_source import PgChangeSource

        source = PgChangeSource(source_url, slot_name(*stream_sites(stream)))
        try:
            source.drop_slot(missing_ok=True)
        finally:
            source.close()
    target = make_engine(target_url)
    try:
        with target.begin() as conn:
            conn.execute(delete(replication_state).where(replication_state.c.stream == stream))
    finally:
        target.dispose()


def _positions(target: Engine, stream: str) -> dict[int, int]:
    with target.connect() as conn:
        return dict(conn.execute(select(replication_state.c.part, replication_state.c.position)
                                 .where(replication_state.c.stream == stream)).all())


def _write_positions(target: Engine, stream: str, partitions: int, position: int, now: float) -> None:
    with target.begin() as conn:
        conn.execute(delete(replication_state).where(replication_state.c.stream == stream))
        conn.execute(replication_state.insert(), [
            {"stream": stream, "part": p, "position": position, "changes": 0, "heartbeat_at": None,
             "applied_at": now} for p in range(partitions)])


def _sqlite_start(source_url: str) -> tuple[int, Callable[[int], bool]]:
    """The change log's counter; a stream at `lowest` continues if the log still holds every seq after it (seqs
    are contiguous: a rolled-back transaction rolls its AUTOINCREMENT back too)."""
    from replication.sqlite_source import SqliteChangeSource

    source = SqliteChangeSource(source_url)
    try:
        head = source.head()
    finally:
        source.close()

    def continues(lowest: int) -> bool:
        if lowest > head:
            return False  # the target is ahead of this log: another database, or a rebuilt one
        engine = make_engine(source_url, writer=False)
        try:
            with engine.connect() as conn:
                held = conn.execute(select(func.count()).select_from(change_log)
                                    .where(change_log.c.seq > lowest, change_log.c.seq <= head)).scalar_one()
        finally:
            engine.dispose()
        return held == head - lowest
    return head, continues


def _prune(source_url: str, position: int) -> None:
    from replication.sqlite_source import SqliteChangeSource

    source = SqliteChangeSource(source_url)
    try:
        source.acknowledge(position)
    finally:
        source.close()


def _pg_start(source_url: str, stream: str) -> tuple[int, Callable[[int], bool]]:
    """The slot's consistent point (created now) or confirmed position (kept); a stream at `lowest` continues only
    if the slot was already there and has not moved past it."""
    from replication.pg_source import PgChangeSource

    source = PgChangeSource(source_url, slot_name(*stream_sites(stream)))
    try:
        existed = source.slot_exists()
        start = source.create_slot(exists_ok=True)
    finally:
        source.close()
    return start, lambda lowest: existed and lowest >= start
