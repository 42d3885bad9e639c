"""ChangeSource for the embedded default: the primary's change_log, filled by triggers in each writing transaction."""
from __future__ import annotations

import json
from collections.abc import Iterator

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import OperationalError

from replication.changes import REPLICATED_TABLES, Change, ChangeOp, SnapshotTable
from replication.errors import SourceUnavailable
from standby.store.engine import make_engine
from standby.store.schema import change_log, metadata


# Built once: a replicator keeping up with a steady load runs read, acknowledge and head tens of times a second.
_WINDOW = (select(change_log).where(change_log.c.seq > bindparam("after")).order_by(change_log.c.seq)
           .limit(bindparam("limit")))
_REST_OF_TRANSACTION = select(change_log).where(
    change_log.c.seq > bindparam("after"), change_log.c.txid == bindparam("txid")).order_by(change_log.c.seq)
_PRUNE = delete(change_log).where(change_log.c.seq <= bindparam("position"))
_NEWEST_REPLICATED = (select(change_log.c.seq).where(change_log.c.table_name.in_(bindparam("tables", expanding=True)))
                      .order_by(change_log.c.seq.desc()).limit(1))


class SqliteChangeSource:
    """Reads change_log in seq order (= commit order: SQLite has one writer at a time).

    `read` never splits a transaction: it extends a window to the end of its last transaction. `acknowledge` prunes
    the log up to the position (the standby has it), so the log holds only what is not yet applied."""

    def __init__(self, url: str, tables: tuple[str, ...] = REPLICATED_TABLES):
        self.url, self.tables = url, tables
        self._reader = make_engine(url, writer=False)
        self._writer = make_engine(url, pool_size=1)
        self._snapshot_conn = None

    def read(self, after: int, limit: int) -> list[Change]:
        try:
            with self._reader.connect() as conn:
                rows = conn.execute(_WINDOW, {"after": after, "limit": limit}).mappings().all()
                if len(rows) == limit:  # finish the last transaction of the window
                    rows += conn.execute(_REST_OF_TRANSACTION, {"after": rows[-1]["seq"],
                                                                "txid": rows[-1]["txid"]}).mappings().all()
        except OperationalError as exc:
            raise SourceUnavailable(f"cannot read the change log at {self.url}: {exc.orig}") from exc
        return [_change(r) for r in rows if r["table_name"] in self.tables]

    def acknowledge(self, position: int) -> None:
        try:
            with self._writer.begin() as conn:
                conn.execute(_PRUNE, {"position": position})
        except OperationalError as exc:
            raise SourceUnavailable(f"cannot prune the change log at {self.url}: {exc.orig}") from exc

    def committed(self) -> int:
        """The newest logged change of a replicated table (what `read` delivers last); with none left in the log
        (everything acknowledged, hence applied), the log's counter, which an applied stream has reached."""
        try:
            with self._reader.connect() as conn:
                # Newest first along the primary key: stops at the first replicated row, however long the log.
                newest = conn.execute(_NEWEST_REPLICATED, {"tables": list(self.tables)}).scalar()
                return newest if newest is not None else _head(conn)
        except OperationalError as exc:
            raise SourceUnavailable(f"cannot read the change log at {self.url}: {exc.orig}") from exc

    def head(self) -> int:
        """The change log's counter: the newest position ever logged (lag in positions; see `committed`)."""
        with self._reader.connect() as conn:
            return _head(conn)

    def snapshot(self) -> tuple[int, list[SnapshotTable]]:
        """One read transaction (WAL: a stable view) gives both the rows and the log position they include."""
        conn = self._reader.connect()
        conn.begin()
        position = _head(conn)
        self._snapshot_conn = conn
        last = len(self.tables) - 1
        return position, [SnapshotTable(t, _rows(conn, t, close=i == last)) for i, t in enumerate(self.tables)]

    def close(self) -> None:
        if self._snapshot_conn is not None and not self._snapshot_conn.closed:
            self._snapshot_conn.close()
        self._reader.dispose()
        self._writer.dispose()


def _head(conn) -> int:
    """The newest position ever logged: the AUTOINCREMENT counter, which pruning does not move back."""
    return conn.exec_driver_sql(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0)").scalar()


def _change(r) -> Change:
    return Change(position=r["seq"], table=r["table_name"], op=ChangeOp(r["op"]), key=json.loads(r["pk"]),
                  row=json.loads(r["row"]) if r["row"] is not None else None, txid=r["txid"],
                  committed_at=r["at"])


def _rows(conn, table: str, close: bool) -> Iterator[dict]:
    """A table's rows in key order; the last table's iterator ends the snapshot's read transaction."""
    t = metadata.tables[table]
    try:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            select(t).order_by(*t.primary_key.columns))
        for row in result.mappings():
            yield dict(row)
    finally:
        if close:
            conn.close()
