"""The one owner of "how far has the standby applied, and has it applied everything the primary committed?".

Everything that waits for a standby (the switchover's wait step, `standbyctl replicate --once` and verify's settle,
the replication bench, the tests' replica fixture) asks here, so there is one notion of the primary's last committed
position: `ChangeSource.committed()`, a position a caught-up standby reaches without any further commit (unlike
PostgreSQL's WAL position, `head()`, which a caught-up standby may stay below until someone commits again).

Contract:
- `committed_position(source)` -> the source's last committed position (transient source errors are retried for
  `timeout_s`, e.g. while the replicator itself holds the PostgreSQL slot for a read).
- `applied_position(standby_engine, stream)` -> the lowest position over the stream's partitions, as stored with the
  rows on the standby, or None when the standby has no such stream.
- `wait_until_applied(...)` -> waits until `applied >= target` (target: the committed position at the call, unless
  given) and returns the applied position, or raises NotCaughtUp(target, applied) after `timeout_s` of `clock`.
  `sleep` is called between looks: pass one that steps a replicator to drive a stream in the caller's thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from tenacity import Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_exponential, \
    wait_fixed

from replication.changes import ChangeSource
from replication.errors import ReplicationError, SourceUnavailable
from standby.store.schema import replication_state

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class NotCaughtUp(ReplicationError):
    """The standby did not apply the target position in time (the stream stopped, stalled or is too far behind)."""

    def __init__(self, target: int, applied: int | None, stream: str | None = None, timeout_s: float | None = None):
        self.target, self.applied, self.stream, self.timeout_s = target, applied, stream, timeout_s
        super().__init__(describe_not_caught_up(target, applied, stream, timeout_s))


def describe_not_caught_up(target: int, applied: int | None, stream: str | None, timeout_s: float | None) -> str:
    """Pure: the operator-facing sentence for a standby that did not catch up."""
    name = f"stream {stream}" if stream else "the stream"
    within = f" within {timeout_s:g} s" if timeout_s is not None else ""
    if applied is None:
        return (f"{name} has not applied the primary's last committed position {target}{within}: the standby has "
                f"no positions for it (never started or prepared)")
    return (f"{name} has not applied the primary's last committed position {target}{within}: applied {applied}, "
            f"{max(0, target - applied)} positions behind (is the replicator running?)")


def caught_up(applied: int | None, target: int) -> bool:
    """Pure: a standby with no positions has applied nothing; otherwise positions compare as integers."""
    return applied is not None and applied >= target


def committed_position(source: ChangeSource, *, timeout_s: float = 30.0, sleep: Sleep = time.sleep) -> int:
    """The source's last committed position (`ChangeSource.committed`), retrying transient failures: on PostgreSQL
    the slot can be busy for a moment while the replicator reads it."""
    for attempt in Retrying(retry=retry_if_exception_type(SourceUnavailable), reraise=True, sleep=sleep,
                            wait=wait_exponential(multiplier=0.02, max=1.0), stop=stop_after_delay(timeout_s)):
        with attempt:
            return source.committed()
    raise AssertionError("unreachable")  # Retrying either returns or re-raises


def applied_position(standby_engine: Engine, stream: str) -> int | None:
    """The stream's applied position on the standby: the lowest over its partitions (every change at or below it is
    applied in every partition), None when the standby has no rows for the stream."""
    with standby_engine.connect() as conn:
        return conn.execute(select(func.min(replication_state.c.position))
                            .where(replication_state.c.stream == stream)).scalar()


def wait_until_applied(source: ChangeSource, standby_engine: Engine, stream: str, *, target: int | None = None,
                       timeout_s: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
                       poll_s: float = 0.05) -> int:
    """Wait until the standby's `stream` has applied `target` (default: the source's committed position now) and
    return the applied position; NotCaughtUp(target, applied) once `timeout_s` of `clock` has passed without it.
    Reads of the standby that fail transiently count as "not yet"."""
    if target is None:
        target = committed_position(source, timeout_s=min(timeout_s, 30.0), sleep=sleep)
    started = clock()
    seen: dict[str, int | None] = {"applied": None}

    def look() -> int | None:
        try:
            seen["applied"] = applied_position(standby_engine, stream)
        except OperationalError:
            pass  # the standby was busy or restarting: look again
        return seen["applied"]

    def timed_out(_state) -> bool:
        return clock() - started >= timeout_s

    def give_up(_state):
        raise NotCaughtUp(target, seen["applied"], stream, timeout_s)

    retrying = Retrying(retry=retry_if_result(lambda applied: not caught_up(applied, target)), stop=timed_out,
                        wait=wait_fixed(poll_s), sleep=sleep, retry_error_callback=give_up)
    return retrying(look)
