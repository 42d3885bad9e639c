"""What a standby had not applied when it was promoted: the changes an old primary holds past the standby's positions.

A failover promotes the standby "with what it has applied": its per-partition applied positions of the stream from
the old primary (`Applier.positions(stream)`, recorded by the failover before the promotion) are the divergence
point. Every change the old primary's source still holds above its partition's position was acknowledged by the old
primary (committed) and never reached the new one. The failover's RPO report lists them by declaration; the failback
moves the rows they touched aside (quarantine) and reconcile brings them back.

Contract:
- `unapplied(changes, positions, partitions)` (pure) keeps the changes whose position is above the position of
  their own partition (`replication.replicator.partition_of`), in commit order. A partition missing from
  `positions` counts as position 0 (nothing applied).
- `unapplied_changes(source, positions, partitions)` reads the source from the lowest position to its end (a
  source only frees what was acknowledged, and a replicator acknowledges only the lowest partition position, so
  everything above it is still there) and returns `unapplied(...)` of it. Raises SourceUnavailable when the old
  primary's database cannot be read.
- `last_images(changes)` (pure) maps (table, key as sorted JSON) to the last change of that row: the state the old
  primary left it in (`row` None when it deleted it).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from replication.changes import Change, ChangeSource
from replication.replicator import partition_of

READ_WINDOW = 5000


def unapplied(changes: Iterable[Change], positions: Mapping[int, int], partitions: int) -> list[Change]:
    """The changes above their partition's applied position, in the order given (commit order)."""
    return [c for c in changes if c.position > positions.get(partition_of(c, partitions), 0)]


def unapplied_changes(source: ChangeSource, positions: Mapping[int, int], partitions: int, *,
                      window: int = READ_WINDOW) -> list[Change]:
    """Every change `source` holds that the standby (at `positions`) had not applied, in commit order."""
    after = min((positions.get(p, 0) for p in range(partitions)), default=0)
    found: list[Change] = []
    while True:
        changes = source.read(after, window)
        if not changes:
            return found
        found.extend(unapplied(changes, positions, partitions))
        after = changes[-1].position


def row_key(change: Change) -> tuple[str, str]:
    """(table, the row's key as sorted JSON): one row's identity across sites."""
    return change.table, json.dumps(change.key, sort_keys=True, separators=(",", ":"))


def last_images(changes: Iterable[Change]) -> dict[tuple[str, str], Change]:
    """The last change of each row, keyed by `row_key`, in the order rows were first touched."""
    images: dict[tuple[str, str], Change] = {}
    for change in changes:
        images[row_key(change)] = change
    return images
