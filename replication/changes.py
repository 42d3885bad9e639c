"""What replication moves: row changes in commit order, each with a position, and the contract of their source."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import msgspec


class ChangeOp(str, Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Change(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="c"):
    """One row change as the primary committed it.

    `position` orders changes in commit order and is unique within a stream (SQLite: the change log's sequence;
    PostgreSQL: the LSN as an integer, with `seq` breaking ties inside one transaction). `key` holds the primary-key
    columns; `row` the whole new row for insert/update (None for delete). Values are JSON-ready (str for Decimal and
    dates, numbers, bools, None); the applier converts them to the column types.

    A msgspec Struct rather than a dataclass: a catch-up builds one per row change in the replicator and again in
    each apply worker, and a Struct is built in C, decoded straight from a window's blob and, with gc=False, never
    tracked by the cyclic collector (its dicts still are)."""

    position: int
    table: str
    op: ChangeOp
    key: dict
    row: dict | None
    txid: int | None = None
    committed_at: float | None = None  # seconds since the epoch, when the source knows it
    seq: int = 0


@dataclass(frozen=True)
class SnapshotTable:
    table: str
    rows: Iterator[dict]  # JSON-ready values, like Change.row


class ChangeSource(Protocol):
    """The primary's changes. Contract:

    - `read(after, limit)` returns up to `limit` changes with position > `after`, in commit order, never a change
      from a transaction that has not committed, and the same changes for the same arguments until acknowledged.
    - `acknowledge(position)`: every change ≤ position is durably applied at the standby; the source may free them
      (PostgreSQL advances the slot). It is never called with a position not yet applied.
    - `snapshot()` returns (position, tables): a consistent copy of every replicated table and the position it is
      consistent with, so streaming from that position has no gap. Rows changed after the position may also be in
      the copy (PostgreSQL); replay is idempotent, so that converges.
    - `committed()` is the position of the newest committed transaction that carries replicated rows, numbered as
      `read` numbers it: the position a standby that has applied everything committed so far has reached (its
      applied position is the position of the last change it applied). A caught-up standby reaches it without any
      further commit. Use it for "has the standby applied everything?" (replication.progress owns that question).
    - `head()` is the source's newest position of any kind (SQLite: the change log's counter; PostgreSQL: the WAL
      write position, which also counts WAL of other tables), for lag in positions only: a caught-up standby may
      stay below it. `close()` releases connections.
    - Optionally `read_window(after, limit)`: `read`'s window, in which some items may not be built yet (an item
      has `position`, `table`, `key` and `committed_at` like a Change; replication.wire builds the rest on the apply
      side). The replicator reads with it when the source has it."""

    def read(self, after: int, limit: int) -> list[Change]: ...

    def acknowledge(self, position: int) -> None: ...

    def snapshot(self) -> tuple[int, list[SnapshotTable]]: ...

    def committed(self) -> int: ...

    def head(self) -> int: ...

    def close(self) -> None: ...


# Tables that replicate. site_control is per site (each keeps its own role and epoch); the change log and the
# replication bookkeeping are per stream; org_remap is the preparing site's own work.
REPLICATED_TABLES = (
    "provinces", "wards", "customs_branches", "customs_branch_provinces", "customs_offices", "officers",
    "officer_rotation", "enterprises", "number_blocks", "declarations", "goods_lines", "officer_assignments",
    "idempotency_keys", "audit_log", "replication_heartbeat", "org_map_state", "org_successors",
)
