"""wal2json's format 1 as row changes: pure parsing, no database.

Format 1 sends one message per transaction (the whole transaction, written at its commit), so a message can never
hold half a transaction. With include-lsn the message carries `nextlsn`, the end of the commit record: the same
number format 2 gives its commit (C) message, hence the position PgChangeSource has always stored.
"""
from __future__ import annotations

import functools
import re
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import msgspec
from sqlalchemy import Float, Numeric

from replication.changes import Change, ChangeOp
from replication.errors import ReplicationError
from standby.store.schema import metadata as schema_metadata

PLUGIN = "wal2json"


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> (0x16 << 32) | 0xB374D848."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def stream_options(schema: str, tables: tuple[str, ...]) -> dict[str, str]:
    """The plugin options of a stream of `tables`: one message per transaction with its xid, commit time and commit
    position, column names and values only (types come from our own schema, see `_table_shape`)."""
    return {"format-version": "1", "include-xids": "1", "include-timestamp": "1", "include-lsn": "1",
            "include-types": "0", "include-typmod": "0", "include-pk": "0", "write-in-chunks": "0",
            "add-tables": add_tables(schema, tables)}


def add_tables(schema: str, tables: tuple[str, ...]) -> str:
    return ",".join(f"{_w2j_escape(schema)}.{_w2j_escape(t)}" for t in tables)


class _OldKeys(msgspec.Struct, gc=False):
    keynames: list[str]
    keyvalues: list


class _Entry(msgspec.Struct, gc=False):
    kind: str
    schema: str = ""
    table: str = ""
    columnnames: list[str] = []
    columnvalues: list = []
    oldkeys: _OldKeys | None = None


class _Message(msgspec.Struct, gc=False):
    nextlsn: str
    change: list[_Entry]
    xid: int | None = None
    timestamp: str | None = None


class _Inexact(Exception):
    """A numeric value too long to have come through a float unchanged."""


# msgspec decodes a whole transaction's message into these shapes several times faster than json (measured on a
# 16,558-change transaction of the bench backlog: 3.6 us per change, 8.1 with every JSON float parsed as a Decimal,
# 8.7-13.7 with json and Decimal); fields we do not use are skipped while decoding. Numbers with a fraction come
# as floats, which keep a numeric value exactly when it has at most 15 significant digits; a message holding a
# longer one is decoded again with every such number as a Decimal.
_decode_fast = msgspec.json.Decoder(_Message).decode
_decode_exact = msgspec.json.Decoder(_Message, float_hook=Decimal).decode


class RowInsert(msgspec.Struct, array_like=True, gc=False, tag="i"):
    """An inserted row as wal2json sent it (its values in the schema's column order), not yet a Change: the
    replicator reads a window of these (and Changes, for everything else) and routes them by key; each apply worker
    builds its own share (`change()`), or on PostgreSQL copies `values_in_schema_order()` straight into the table,
    so the per-row work of a catch-up runs in the workers in parallel instead of in the replicator alone.
    `change()` gives exactly the Change `transaction` gives for the same insert."""

    position: int
    table: str
    values: list
    txid: int | None
    committed_at: float | None
    seq: int

    op = ChangeOp.INSERT

    @property
    def key(self) -> dict:
        """The primary key, equal to the built Change's (the replicator routes by it)."""
        shape, values = _insert_shape(self.table), self.values
        key = {n: values[i] for n, i in zip(shape.pk, shape.pk_at)}
        return _converted(key, shape.convert) if shape.pk_converted else key

    def values_in_schema_order(self) -> list:
        """The row's values, converted as `change()` converts them."""
        values = list(self.values)
        for i, to in _insert_shape(self.table).convert_at:
            if values[i] is not None:
                values[i] = to(values[i])
        return values

    def change(self) -> Change:
        shape = _insert_shape(self.table)
        row = dict(zip(shape.columns, self.values_in_schema_order(), strict=True))
        return Change(self.position, self.table, ChangeOp.INSERT, {n: row[n] for n in shape.pk}, row, self.txid,
                      self.committed_at, self.seq)


class _InsertShape(NamedTuple):
    columns: list[str]  # the schema's order
    pk: tuple[str, ...]
    pk_at: tuple[int, ...]  # where each key column is in `columns`
    pk_converted: bool
    convert: dict
    convert_at: tuple[tuple[int, object], ...]
    exact_below: tuple[tuple[int, float], ...]  # numeric columns: a float at least this large may have lost digits


@functools.lru_cache(maxsize=64)
def _insert_shape(table: str) -> _InsertShape:
    pk, convert = _table_shape(table)
    columns = schema_metadata.tables[table].columns
    names = [c.name for c in columns]
    return _InsertShape(names, pk, tuple(names.index(n) for n in pk), any(n in convert for n in pk), convert,
                        tuple((names.index(n), to) for n, to in convert.items()),
                        tuple((names.index(c.name), _exact_below(c.type.scale)) for c in columns
                              if isinstance(c.type, Numeric) and not isinstance(c.type, Float)))


def built(item: Change | RowInsert) -> Change:
    """A window item as a Change (the identity for a Change)."""
    return item if type(item) is Change else item.change()


def transaction(payload: bytes | str, tables: tuple[str, ...] | frozenset[str]) -> tuple[int, list[Change]]:
    """(commit position, changes in the order the transaction made them) of one format-1 message. A transaction
    that touched only other tables, or only sent logical messages, gives no changes. A TRUNCATE cannot be carried
    as row changes: ReplicationError."""
    position, items = transaction_items(payload, tables)
    return position, [built(item) for item in items]


def transaction_items(payload: bytes | str, tables: tuple[str, ...] | frozenset[str]
                      ) -> tuple[int, list[Change | RowInsert]]:
    """`transaction` with each insert left as a RowInsert (`built` makes it the same Change)."""
    try:
        try:
            return _transaction(_decode_fast(payload), tables)
        except _Inexact:
            return _transaction(_decode_exact(payload), tables)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: names and values of a row that do not pair up
        raise ReplicationError(f"wal2json sent a message this reader cannot parse: {exc}") from exc


def _transaction(msg: _Message, tables) -> tuple[int, list[Change | RowInsert]]:
    position = lsn_to_int(msg.nextlsn)
    committed_at = datetime.fromisoformat(msg.timestamp).timestamp() if msg.timestamp else None
    xid = msg.xid
    items: list[Change | RowInsert] = []
    for entry in msg.change:
        kind = entry.kind
        if kind == "message":
            continue
        if kind not in ("insert", "update", "delete"):
            raise ReplicationError(f"{kind.upper()} of {entry.schema}.{entry.table} at "
                                   f"{int_to_lsn(position)} cannot be replicated as row changes; take a new snapshot")
        table = entry.table
        if table not in tables:
            continue
        if kind == "insert":
            shape = _insert_shape(table)
            if entry.columnnames == shape.columns:  # else (columns added in another order) built here
                values = entry.columnvalues
                if len(values) != len(shape.columns):  # built in a worker: refuse it here, where it is read
                    raise ReplicationError(f"wal2json sent a message this reader cannot parse: an insert into "
                                           f"{table} at {int_to_lsn(position)} has {len(values)} values for "
                                           f"{len(shape.columns)} columns")
                for i, bound in shape.exact_below:  # what `_numeric` would refuse, refused before the row leaves
                    if values[i].__class__ is float and not abs(values[i]) < bound:
                        raise _Inexact()
                items.append(RowInsert(position, table, values, xid, committed_at, len(items)))
                continue
        for op, key, row in _row_changes(kind, table, entry):
            items.append(Change(position, table, op, key, row, xid, committed_at, len(items)))
    return position, items


def _row_changes(kind: str, table: str, entry: _Entry) -> list[tuple[ChangeOp, dict, dict | None]]:
    """One change of a format-1 message. An update that changes the primary key is a delete of the old key and an
    insert of the new one (as the SQLite change capture logs it)."""
    pk, convert = _table_shape(table)
    if kind != "insert":  # inserts carry no old identity; with REPLICA IDENTITY DEFAULT the old keys are the pk
        old = entry.oldkeys
        identity = _converted(dict(zip(old.keynames, old.keyvalues, strict=True)), convert)
        old_key = {n: identity[n] for n in pk} if all(n in identity for n in pk) else identity
        if kind == "delete":
            return [(ChangeOp.DELETE, old_key, None)]
    row = _converted(dict(zip(entry.columnnames, entry.columnvalues, strict=True)), convert)
    key = {n: row[n] for n in pk}
    if kind == "insert":
        return [(ChangeOp.INSERT, key, row)]
    if old_key and old_key != key:
        return [(ChangeOp.DELETE, old_key, None), (ChangeOp.INSERT, key, row)]
    return [(ChangeOp.UPDATE, key, row)]


def _converted(values: dict, convert: dict) -> dict:
    for name, to in convert.items():
        value = values.get(name)
        if value is not None:
            values[name] = to(value)
    return values


@functools.lru_cache(maxsize=64)
def _table_shape(table: str) -> tuple[tuple[str, ...], dict]:
    """A table's primary-key columns (in the schema's order, the order keys are compared and stored in) and, per
    column, how wal2json's JSON value becomes what a snapshot gives for it (PgChangeSource's `_json_ready`). Only
    numbers need it: numeric becomes the exact plain str PostgreSQL prints (its scale's digits), double precision a
    float; text, integers, booleans and dates pass as they come."""
    columns = schema_metadata.tables[table]
    convert = {}
    for column in columns.columns:
        if isinstance(column.type, Float):
            convert[column.name] = float
        elif isinstance(column.type, Numeric):
            convert[column.name] = _numeric(column.type.scale)
    return tuple(c.name for c in columns.primary_key.columns), convert


def _exact_below(scale: int | None) -> float:
    return 10 ** (15 - scale) if scale is not None and scale <= 15 else 0


def _numeric(scale: int | None):
    """numeric(p, scale) as the plain str PostgreSQL prints. A float from the fast decoder is exact only below
    10 ** (15 - scale) (15 significant digits); above, or without a declared scale, `_Inexact` asks for the exact
    decoding."""
    safe_below = _exact_below(scale)
    # Below that bound the float is the double nearest to a number of at most `scale` decimals, off by far less
    # than half a unit of the last decimal, so rounding it to `scale` decimals gives that number back exactly
    # (and four times faster than going through Decimal, the catch-up's largest cost of parsing on goods lines).
    spec = f".{scale}f"

    def convert(value) -> str:
        if isinstance(value, float):
            if not abs(value) < safe_below:
                raise _Inexact()
            return format(value, spec)
        return format(Decimal(value), "f")
    return convert


def _w2j_escape(name: str) -> str:
    # wal2json's add-tables list: space, quote, comma, period and asterisk are escaped with a backslash.
    return re.sub(r"([ ',.*\\])", r"\\\1", name)
