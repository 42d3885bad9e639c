"""A read window's trip from the replicator to an apply worker: one msgspec msgpack blob (standby.wire).

Ray's pickling of the Change objects one by one cost the replicator's driver more than parsing them (py-spy,
PostgreSQL catch-up: a third of the driver's CPU), while msgspec encodes a window for about a microsecond a change and
the worker decodes it in C. A window may hold RowInserts (replication.pg_wal2json) beside Changes: the workers' Applier
builds or copies them, so the per-row work of a PostgreSQL catch-up is shared by the workers instead of done by the
replicator alone.
"""
from __future__ import annotations

from collections.abc import Sequence

from replication.changes import Change
from replication.pg_wal2json import RowInsert
from standby.wire import Wire

_WINDOW = Wire(list[Change | RowInsert])


def encode_window(items: Sequence[Change | RowInsert]) -> bytes:
    """A window as one blob for another process. Values must be JSON-ready (Change's contract) or as wal2json sent
    them (RowInsert); a Decimal or a date comes back as str, which both give the same row once built."""
    return _WINDOW.encode(items)


def decode_window(blob: bytes) -> list[Change | RowInsert]:
    """The window `encode_window` was given, equal and in the same order (the Applier takes it as it is)."""
    return _WINDOW.decode(blob)
