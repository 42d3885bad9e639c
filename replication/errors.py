"""Errors of the replication path: what a caller retries, and what stops a stream until someone looks."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replication.changes import Change


class ReplicationError(Exception):
    """Replication cannot go on as asked (missing or duplicate slot, a gap in the stream, an unsupported change)."""


class SourceUnavailable(ReplicationError):
    """Transient: the source database could not be reached or aborted the statement (connection refused or reset,
    administrator shutdown, serialization failure). Nothing was consumed; retry the same call later."""


class PermanentApplyError(ReplicationError):
    """A change that can never be applied at the standby as it is (retrying will not help). Names the table, the
    key and the position of the change."""

    def __init__(self, change: Change | None, reason: str):
        self.change, self.reason = change, reason
        where = (f"{change.op.value} on {change.table} key {change.key} at position {change.position}"
                 if change is not None else "a change (not identified)")
        super().__init__(f"cannot apply {where}: {reason}")


class TargetUnavailable(ReplicationError):
    """Transient: the standby's database could not be written (locked, connection dropped) or an apply worker died.
    Nothing of the window was applied; retry it."""


class SchemaMismatch(ReplicationError):
    """The two sides are at different Alembic revisions; replication refuses to run across them."""
