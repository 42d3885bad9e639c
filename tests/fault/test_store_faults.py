"""The pipeline when the database misbehaves: a poison command, a database locked by someone else."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import func, select, text

from standby.clearance.commands import Command, Op
from standby.clearance.pipeline import ClearancePipeline, StoreUnavailable
from standby.store.engine import make_engine
from standby.store.schema import declarations, idempotency_keys
from tests.integration.desk import OPERATOR, Desk

pytestmark = pytest.mark.fault


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_a_poison_command_does_not_sink_its_batch_and_leaves_nothing_half_written(site_db, tariff, rules):
    engine = site_db.engine()
    with engine.begin() as conn:  # the database refuses one particular goods line, as a broken constraint would
        conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON goods_lines WHEN NEW.description = 'POISON' "
                          "BEGIN SELECT RAISE(ABORT, 'poisoned line'); END"))
    desk = Desk(ClearancePipeline(engine, "A", 1, tariff, rules), tariff)
    tax_codes = site_db.active_enterprises(4)
    payloads = [desk.payload(t) for t in tax_codes]
    payloads[1]["goods"][0]["description"] = "POISON"
    outcomes = desk.pipeline.process([Command(Op.PRE_DECLARE, OPERATOR, f"poison-{i}", p, "01CA")
                                      for i, p in enumerate(payloads)])
    assert [o.status for o in outcomes] == [201, 503, 201, 201]
    assert outcomes[1].body["error"]["code"] == "store_error"
    assert "nothing was written" in outcomes[1].body["error"]["message"]
    assert count(engine, declarations) == 3
    assert count(engine, idempotency_keys) == 3  # the poisoned one may be retried with its key
    with engine.connect() as conn:
        orphans = conn.execute(text("SELECT count(*) FROM goods_lines WHERE declaration_base NOT IN "
                                    "(SELECT base FROM declarations)")).scalar()
    assert orphans == 0
    engine.dispose()


def test_a_locked_database_is_reported_unavailable_and_nothing_is_written(site_db, tariff, rules, tmp_path):
    # A short lock wait, so the test does not wait 30 s for each attempt.
    impatient = make_engine(site_db.url, lock_wait_s=0.2)
    desk = Desk(ClearancePipeline(impatient, "A", 1, tariff, rules, retry_attempts=2), tariff)
    tax_code = site_db.active_enterprises(1)[0]
    blocker = _other_writer(site_db.url)
    try:
        with pytest.raises(StoreUnavailable, match="after 2 attempts"):
            desk.predeclare(tax_code)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    reader = site_db.engine(writer=False)
    assert count(reader, declarations) == 0 and count(reader, idempotency_keys) == 0
    # When the lock goes away, the same pipeline carries on, numbering without a reused number.
    made = desk.predeclare(tax_code)
    assert made.status == 201
    reader.dispose()
    impatient.dispose()


def test_a_lock_held_briefly_is_waited_out(site_db, tariff, rules):
    engine = site_db.engine()
    desk = Desk(ClearancePipeline(engine, "A", 1, tariff, rules), tariff)
    tax_code = site_db.active_enterprises(1)[0]
    holder = _other_writer(site_db.url)
    release = threading.Timer(0.5, lambda: holder.execute("ROLLBACK"))
    release.start()
    started = time.monotonic()
    made = desk.predeclare(tax_code)
    release.join()
    holder.close()
    assert made.status == 201 and time.monotonic() - started >= 0.4
    engine.dispose()


def _other_writer(url: str) -> sqlite3.Connection:
    """Another process's writer, holding SQLite's write lock until it rolls back."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn

