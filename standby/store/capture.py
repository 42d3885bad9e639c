"""SQLite change capture: the AFTER triggers that log each row change of a replicated table into change_log.

Migrations create them (0002 for the first tables; later revisions rebuild a table's triggers when its columns
change, since a trigger lists every column it logs). Changing the shape here changes what every migration creates
from then on; the replicated row format (a JSON object per row, the primary key apart) must stay readable by
`replication.sqlite_source`.
"""
from __future__ import annotations

EVENTS = ("insert", "update", "delete")


def capture_triggers(table: str, pk: tuple, columns: tuple, reals: tuple = ()) -> list[str]:
    """AFTER triggers that log each row change into change_log in the writing transaction (commit order = seq).
    A change of primary key is logged as a delete of the old key and an insert of the new one."""
    def value(ref: str, c: str) -> str:
        if c in reals:
            return f"CASE WHEN {ref}.\"{c}\" IS NULL THEN NULL ELSE printf('%!.17g', {ref}.\"{c}\") END"
        return f"{ref}.\"{c}\""

    def obj(ref: str, names: tuple) -> str:
        return "json_object(" + ", ".join(f"'{c}', {value(ref, c)}" for c in names) + ")"
    now = "(julianday('now') - 2440587.5) * 86400.0"
    txid = "(SELECT txid FROM capture_txn WHERE id = 1)"
    # The standby's applier switches capture off inside its own transactions: what it writes is the primary's
    # history, not the standby's, and no other connection can see the switch.
    when = "WHEN (SELECT capture FROM capture_txn WHERE id = 1) = 1"
    log = "INSERT INTO change_log (table_name, op, pk, row, at, txid) VALUES"
    key_changed = " OR ".join(f'OLD."{c}" IS NOT NEW."{c}"' for c in pk)
    return [
        f"CREATE TRIGGER capture_{table}_insert AFTER INSERT ON \"{table}\" {when} BEGIN "
        f"{log} ('{table}', 'insert', {obj('NEW', pk)}, {obj('NEW', columns)}, {now}, {txid}); END",
        f"CREATE TRIGGER capture_{table}_update AFTER UPDATE ON \"{table}\" {when} BEGIN "
        f"INSERT INTO change_log (table_name, op, pk, row, at, txid) "
        f"SELECT '{table}', 'delete', {obj('OLD', pk)}, NULL, {now}, {txid} WHERE {key_changed}; "
        f"{log} ('{table}', 'update', {obj('NEW', pk)}, {obj('NEW', columns)}, {now}, {txid}); END",
        f"CREATE TRIGGER capture_{table}_delete AFTER DELETE ON \"{table}\" {when} BEGIN "
        f"{log} ('{table}', 'delete', {obj('OLD', pk)}, NULL, {now}, {txid}); END",
    ]


def drop_capture_triggers(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS capture_{table}_{event}" for event in EVENTS]
