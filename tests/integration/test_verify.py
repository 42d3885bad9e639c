"""replication.verify on real databases: two copies of one seeded site compare equal; every edit made to one copy is
named (table, key, kind, columns) and nothing else; a lagging standby passes once settle() lets it catch up."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from replication.verify import VERIFY_TABLES, verify
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.states import SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.seed import seed
from standby.store.site import init_site
from tests.conftest import make_site_db
from tests.integration.desk import Desk
from tests.pg_fixtures import unique_db_name

DECLARATIONS = 60


def add_declarations(engine, tax_codes: list[str], tariff, rules) -> None:
    """Pre-declare through the real pipeline and register every other one (goods lines, assignments, audit)."""
    desk = Desk(ClearancePipeline(engine, "A", 1, tariff, rules, block_size=50), tariff, rng_seed=7)
    for i in range(DECLARATIONS):
        made = desk.predeclare(tax_codes[i % len(tax_codes)])
        assert made.ok, made.body
        if i % 2:
            assert desk.register(made.body["number"]).ok


@pytest.fixture(scope="module")
def primary_file(tmp_path_factory, org, tariff, rules) -> Path:
    """A seeded SQLite site with declarations, its WAL checkpointed into the .db so the file alone is a copy."""
    site = make_site_db(tmp_path_factory.mktemp("verify"), org)
    engine = site.engine()
    add_declarations(engine, site.active_enterprises(40), tariff, rules)
    engine.dispose()
    path = Path(site.url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def sides(primary_file, tmp_path):
    """(primary engine, standby engine, standby path): the standby a byte copy of the primary."""
    copy = tmp_path / "standby.db"
    shutil.copy(primary_file, copy)
    primary, standby = make_engine(f"sqlite:///{primary_file}", writer=False), make_engine(f"sqlite:///{copy}",
                                                                                             writer=False)
    yield primary, standby, copy
    primary.dispose()
    standby.dispose()


def edit(path: Path, *statements: tuple[str, tuple]) -> None:
    with sqlite3.connect(path) as raw:  # foreign keys off: a replica may be wrong in any way
        for sql, params in statements:
            raw.execute(sql, params)


def one(path: Path, sql: str, params: tuple = ()) -> tuple:
    with sqlite3.connect(path) as raw:
        return raw.execute(sql, params).fetchone()


def named(report) -> set:
    return {(d.table, tuple(d.key.items()), d.kind, d.columns) for d in report.differences}


def test_identical_copies_are_ok_in_several_chunks(sides):
    primary, standby, _ = sides
    calls = []
    report = verify(primary, standby, chunk_rows=500, progress=lambda *a: calls.append(a))
    assert report.ok and report.differences == [] and report.chunks_drilled == 0, report.summary()
    assert [t.table for t in report.tables] == list(VERIFY_TABLES) and "replication_heartbeat" not in VERIFY_TABLES
    enterprises = report.table("enterprises")
    assert (enterprises.rows, enterprises.standby_rows, enterprises.chunks) == (3000, 3000, 6)  # exact multiple
    assert report.table("goods_lines").rows > DECLARATIONS and report.table("idempotency_keys").rows >= DECLARATIONS
    for t in report.tables:
        mine = [c for c in calls if c[0] == t.table]
        assert mine[0] == (t.table, 0, t.chunks) and mine[-1] == (t.table, t.chunks, t.chunks)
        assert t.chunks == max(1, -(-t.rows // 500))
    lines = report.summary()
    assert lines[0].startswith("provinces: ") and "enterprises: 3,000 rows in 6 chunks, 0 differences" in "\n".join(
        lines) and lines[-1].startswith("OK: ")


def test_tiny_chunks_cover_composite_keys_exactly(sides):
    primary, standby, _ = sides
    report = verify(primary, standby, ["goods_lines", "idempotency_keys", "provinces", "audit_log"], chunk_rows=7)
    assert report.ok, report.summary()
    for t in report.tables:
        assert t.chunks == max(1, -(-t.rows // 7)) and t.rows == t.standby_rows > 7


@pytest.mark.parametrize("chunk_rows", [500, 7])
def test_every_edit_is_named_and_only_differing_chunks_are_drilled(sides, chunk_rows):
    primary, standby, copy = sides
    tax_code, street = one(copy, "SELECT tax_code, street FROM enterprises ORDER BY tax_code LIMIT 1 OFFSET 1234")
    (officer,) = one(copy, "SELECT officer_id FROM officers ORDER BY officer_id LIMIT 1 OFFSET 5")
    base, line_no = one(copy, "SELECT declaration_base, line_no FROM goods_lines ORDER BY declaration_base DESC, "
                              "line_no DESC LIMIT 1 OFFSET 10")
    edit(copy,
         ("UPDATE enterprises SET street = ? WHERE tax_code = ?", (street + " (sửa)", tax_code)),
         ("DELETE FROM officers WHERE officer_id = ?", (officer,)),
         ("INSERT INTO idempotency_keys VALUES ('zz-nobody', 'extra-key', 'h', 200, '{}', 1.0)", ()),
         (("UPDATE goods_lines SET description = description || '!', unit_price = unit_price + 1 "
           "WHERE declaration_base = ? AND line_no = ?"), (base, line_no)))

    report = verify(primary, standby, chunk_rows=chunk_rows)

    assert not report.ok
    assert named(report) == {
        ("enterprises", (("tax_code", tax_code),), "different", ("street",)),
        ("officers", (("officer_id", officer),), "missing", ()),
        ("idempotency_keys", (("principal", "zz-nobody"), ("key", "extra-key")), "extra", ()),
        ("goods_lines", (("declaration_base", base), ("line_no", line_no)), "different",
         ("description", "unit_price")),
    }
    drilled = {t.table: t.chunks_drilled for t in report.tables if t.chunks_drilled}
    assert drilled == {"enterprises": 1, "officers": 1, "idempotency_keys": 1, "goods_lines": 1}
    assert report.chunks_drilled == 4 < sum(t.chunks for t in report.tables)
    assert report.table("officers").standby_rows == report.table("officers").rows - 1
    text = "\n".join(report.summary())
    assert f"officers ({'officer_id'}={officer}): missing on standby" in text
    assert "idempotency_keys (principal=zz-nobody, key=extra-key): extra on standby" in text
    assert "different in description, unit_price" in text and text.splitlines()[-1].startswith("DIFFERENT: 4 differing keys")


def test_a_lagging_standby_passes_after_settle_and_is_reported_without_it(sides):
    primary, standby, copy = sides
    row = one(copy, "SELECT * FROM goods_lines ORDER BY declaration_base LIMIT 1 OFFSET 3")
    edit(copy, ("DELETE FROM goods_lines WHERE declaration_base = ? AND line_no = ?", (row[0], row[1])))
    key = (("declaration_base", row[0]), ("line_no", row[1]))

    behind = verify(primary, standby, ["goods_lines"], chunk_rows=50)
    assert named(behind) == {("goods_lines", key, "missing", ())} and behind.table("goods_lines").rechecks == 0

    never = []
    stuck = verify(primary, standby, ["goods_lines"], chunk_rows=50, settle=lambda: never.append(1), rechecks=2)
    # settle ran for each of the chunk's 2 re-checks, then for each of the 2 looks at the differing key alone
    assert named(stuck) == {("goods_lines", key, "missing", ())} and len(never) == 2 + 2
    assert stuck.table("goods_lines").rechecks == 2 and stuck.chunks_drilled == 1

    settled = []

    def settle():  # the replicator catches up: the row arrives
        settled.append(1)
        edit(copy, (f"INSERT INTO goods_lines VALUES ({', '.join('?' * len(row))})", row))

    caught_up = verify(primary, standby, ["goods_lines"], chunk_rows=50, settle=settle)
    assert caught_up.ok and len(settled) == 1, caught_up.summary()
    assert caught_up.table("goods_lines").rechecks == 1 and caught_up.chunks_drilled == 0


def test_refuses_mixed_dialects_and_unknown_tables(sides):
    primary, standby, _ = sides
    postgres = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connects
    with pytest.raises(ValueError, match="same kind"):
        verify(primary, postgres)
    with pytest.raises(ValueError, match="no_such_table"):
        verify(primary, standby, ["enterprises", "no_such_table"])


@pytest.mark.postgres
def test_postgres_copies_compare_equal_and_a_changed_row_is_named(pg_cluster, org, tariff, rules):
    names = [unique_db_name("verify_primary"), unique_db_name("verify_standby")]
    engines = []
    try:
        url_a = pg_cluster.create_database(names[0])
        upgrade(url_a)
        writer = make_engine(url_a)
        init_site(writer, "A", SiteRole.PRIMARY)
        seed(writer, org, enterprises_count=3000, officers_per_section=3)
        with writer.connect() as conn:
            tax_codes = list(conn.exec_driver_sql(
                "SELECT tax_code FROM enterprises WHERE status = 'active' AND tax_debt_days <= 90 "
                "ORDER BY tax_code LIMIT 40").scalars())
        add_declarations(writer, tax_codes, tariff, rules)
        writer.dispose()  # TEMPLATE needs the source without sessions
        url_b = pg_cluster.create_database(names[1], template=names[0])
        primary, standby = make_engine(url_a, writer=False), make_engine(url_b, writer=False)
        engines += [primary, standby]

        same = verify(primary, standby, chunk_rows=500)
        assert same.ok and same.dialect == "postgresql" and same.chunks_drilled == 0, same.summary()
        assert same.table("enterprises").chunks == 6 and same.table("goods_lines").rows > DECLARATIONS
        tiny = verify(primary, standby, ["goods_lines", "idempotency_keys", "provinces"], chunk_rows=7)
        assert tiny.ok and all(t.chunks == -(-t.rows // 7) for t in tiny.tables), tiny.summary()

        with standby.begin() as conn:
            base, line_no = conn.exec_driver_sql("SELECT declaration_base, line_no FROM goods_lines "
                                                 "ORDER BY declaration_base, line_no LIMIT 1 OFFSET 20").one()
            conn.exec_driver_sql("UPDATE goods_lines SET quantity = quantity + 1 WHERE declaration_base = %(b)s "
                                 "AND line_no = %(n)s", {"b": base, "n": line_no})
            tax_code = conn.exec_driver_sql("SELECT tax_code FROM enterprises ORDER BY tax_code "
                                            "LIMIT 1 OFFSET 2500").scalar()
            conn.exec_driver_sql("UPDATE enterprises SET name = name || ' X', risk_class = 'other' "
                                 "WHERE tax_code = %(t)s", {"t": tax_code})
        changed = verify(primary, standby, chunk_rows=7)
        assert named(changed) == {
            ("goods_lines", (("declaration_base", base), ("line_no", line_no)), "different", ("quantity",)),
            ("enterprises", (("tax_code", tax_code),), "different", ("name", "risk_class")),
        }
        assert changed.chunks_drilled == 2
    finally:
        for engine in engines:
            engine.dispose()
        for name in names:
            pg_cluster.drop_database(name)


def test_a_row_written_between_the_two_reads_is_in_flight_not_extra(primary_file, sides, tmp_path):
    """Verify against a live primary: a row the primary commits after its read and the standby has by its read is
    not reported (the key-level look finds it on the primary too); a row only the standby has is."""
    _shared, standby, copy = sides
    original = tmp_path / "live-primary.db"  # this test writes to its primary: its own copy
    shutil.copy(primary_file, original)
    primary = make_engine(f"sqlite:///{original}", writer=False)
    row = one(copy, "SELECT * FROM goods_lines ORDER BY declaration_base DESC LIMIT 1")
    late = (row[0], row[1] + 100, *row[2:])

    calls = []

    def settle():  # the primary commits the row only while verify looks at the key alone (the second settle)
        calls.append(1)
        if len(calls) == 2:
            edit(original, (f"INSERT INTO goods_lines VALUES ({', '.join('?' * len(late))})", late))

    edit(copy, (f"INSERT INTO goods_lines VALUES ({', '.join('?' * len(late))})", late))
    live = verify(primary, standby, ["goods_lines"], chunk_rows=50, settle=settle, rechecks=1)
    assert live.ok and len(calls) == 2 and live.chunks_drilled == 1, live.summary()

    ghost = (row[0], row[1] + 200, *row[2:])
    edit(copy, (f"INSERT INTO goods_lines VALUES ({', '.join('?' * len(ghost))})", ghost))
    extra = verify(primary, standby, ["goods_lines"], chunk_rows=50, settle=lambda: None)
    key = (("declaration_base", ghost[0]), ("line_no", ghost[1]))
    assert named(extra) == {("goods_lines", key, "extra", ())}
    primary.dispose()
