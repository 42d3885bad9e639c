"""The witness on a real SQLite file: the contract (contract.py) under concurrency, its migration, its failures.

The `check_*` functions take an open witness (or its URL) and hold the assertions; the PostgreSQL tests
(test_witness_postgres.py) run the same ones, so both backends keep one contract.
"""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from cutover.witness import (
    AuditRecord,
    LeaseHeld,
    RunRecord,
    StaleEpoch,
    WitnessError,
    WitnessState,
    WitnessUnavailable,
    open_witness,
)
from cutover.witness.migrate import head_revision
from cutover.witness.schema import VERSION_TABLE, metadata

THREADS = 8
ROUNDS = 4


# --- checks shared with the PostgreSQL tests --------------------------------------------------------------------

def check_initialise_once(witness) -> None:
    assert witness.state() == WitnessState(epoch=0, primary_site=None)
    first = witness.initialise("A")
    assert (first.epoch, first.primary_site, first.updated_at) == (1, "A", 1000.0)
    again = witness.initialise("B")  # a witness with a primary is returned unchanged; the caller refuses
    assert again == first == witness.state()


def check_promote_race_has_one_winner(witness) -> None:
    """Several promoters with the same expected epoch at once: exactly one wins, the epoch goes up by one."""
    witness.initialise("A")
    for _ in range(ROUNDS):
        before = witness.state()
        barrier, outcomes = threading.Barrier(THREADS), []

        def promote(i: int) -> None:
            barrier.wait()
            try:
                outcomes.append(("won", witness.promote(f"S{i}", before.epoch)))
            except StaleEpoch as exc:
                outcomes.append(("stale", str(exc)))

        threads = [threading.Thread(target=promote, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        winners = [state for kind, state in outcomes if kind == "won"]
        assert len(outcomes) == THREADS and len(winners) == 1, outcomes
        after = witness.state()
        assert after.epoch == before.epoch + 1 and after == winners[0]
        assert all(f"not {before.epoch}" in msg for kind, msg in outcomes if kind == "stale")


def check_promote_is_compare_and_set(witness) -> None:
    witness.initialise("A")
    witness.renew_lease("A", 1, 10.0, now=50.0)
    promoted = witness.promote("B", 1)
    assert (promoted.epoch, promoted.primary_site) == (2, "B")
    assert (promoted.lease_holder, promoted.lease_expires_at) == (None, None)  # a promotion clears the lease
    with pytest.raises(StaleEpoch, match="epoch 2"):
        witness.promote("A", 1)
    assert witness.state() == promoted


def check_lease(witness) -> None:
    witness.initialise("A")
    renewed = witness.renew_lease("A", 1, 15.0, now=100.0)
    assert (renewed.lease_holder, renewed.lease_expires_at, renewed.updated_at) == ("A", 115.0, 100.0)
    with pytest.raises(StaleEpoch, match="names A primary at epoch 1"):
        witness.renew_lease("B", 1, 15.0, now=101.0)  # not the primary
    witness.promote("B", 1)
    with pytest.raises(StaleEpoch, match="epoch 1"):
        witness.renew_lease("A", 1, 15.0, now=102.0)  # the old primary, fenced by the new epoch
    with pytest.raises(StaleEpoch):
        witness.renew_lease("B", 1, 15.0, now=102.0)  # the new primary with a stale epoch
    assert witness.renew_lease("B", 2, 5.0, now=103.0).lease_expires_at == 108.0
    with pytest.raises(ValueError):
        witness.renew_lease("B", 2, 0, now=104.0)


def check_promote_requires_an_expired_lease_when_asked(witness) -> None:
    witness.initialise("A")
    witness.renew_lease("A", 1, 3.0, now=100.0)
    with pytest.raises(LeaseHeld, match="site A holds the lease") as held:
        witness.promote("B", 1, lease_expired_by=102.9)  # a failover while A may still be writing
    assert (held.value.holder, held.value.expires_at) == ("A", 103.0)
    assert (witness.state().epoch, witness.state().primary_site) == (1, "A"), "a refused promotion changed nothing"
    promoted = witness.promote("B", 1, lease_expired_by=103.0)
    assert (promoted.epoch, promoted.primary_site, promoted.lease_holder) == (2, "B", None)
    # No lease at all (B never renewed) counts as expired; a switchover (no lease_expired_by) never asks.
    assert witness.promote("A", 2, lease_expired_by=0.0).primary_site == "A"
    witness.renew_lease("A", 3, 3.0, now=200.0)
    assert witness.promote("B", 3).epoch == 4


def check_journal(witness, raw_sql) -> None:
    witness.create_run(RunRecord("run-1", "switchover", "alice", {"from": "A", "to": "B"}, "running", 10.0, 10.0))
    witness.create_run(RunRecord("run-2", "switchover", "bob", {}, "running", 20.0, 20.0))
    with pytest.raises(WitnessError, match="already exists"):
        witness.create_run(RunRecord("run-1", "x", "y", {}, "running", 1.0, 1.0))
    with pytest.raises(WitnessError, match="no runbook run nope"):
        witness.append("nope", "freeze", "intent", {}, at=1.0)
    per_thread, barrier = 15, threading.Barrier(6)

    def appender(i: int) -> None:
        barrier.wait()
        for k in range(per_thread):
            witness.append("run-1", f"step-{i}", "intent", {"thread": i, "k": k}, at=11.0 + k)

    threads = [threading.Thread(target=appender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert witness.append("run-2", "preflight", "intent", {}, at=21.0) == 1  # seq is per run
    entries = witness.entries("run-1")
    assert [e.seq for e in entries] == list(range(1, 6 * per_thread + 1))
    for i in range(6):  # each appender's entries keep its order
        assert [e.detail["k"] for e in entries if e.detail["thread"] == i] == list(range(per_thread))
    witness.set_run_status("run-1", "done", at=30.0)
    assert witness.run("run-1").status == "done" and witness.run("run-1").updated_at == 30.0
    assert witness.run("missing") is None
    assert [r.run_id for r in witness.runs()] == ["run-2", "run-1"] and len(witness.runs(limit=1)) == 1
    with pytest.raises(WitnessError):
        witness.set_run_status("missing", "done", at=1.0)
    witness.audit(AuditRecord(at=1.0, operator="alice", action="runbook.run", target="run-1", args={}, outcome="ok"))
    for statement in ("UPDATE runbook_journal SET phase = 'done'", "DELETE FROM runbook_journal",
                      "DELETE FROM audit_log", "UPDATE audit_log SET outcome = 'ok'"):
        with pytest.raises(Exception, match="append-only"):
            raw_sql(statement)
    assert len(witness.entries("run-1")) == 6 * per_thread


def check_audit(witness) -> None:
    for i in range(5):
        witness.audit(AuditRecord(at=100.0 + i, operator="alice", action="db.upgrade", target=f"S{i}",
                                  args={"role": "primary"}, outcome="ok" if i % 2 else "refused",
                                  duration_s=0.5 if i else None, detail={"held": i}))
    records = witness.audit_records()
    assert [r.target for r in records] == ["S4", "S3", "S2", "S1", "S0"]
    assert records[0] == AuditRecord(104.0, "alice", "db.upgrade", "S4", {"role": "primary"}, "refused", 0.5,
                                     {"held": 4})
    assert records[-1].duration_s is None and len(witness.audit_records(limit=2)) == 2


def check_schema_matches_the_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            assert compare_metadata(context, metadata) == []
            assert context.get_current_revision() == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"witness_state", "runbook_runs", "runbook_journal", "audit_log", VERSION_TABLE} <= tables
        assert "alembic_version" not in tables  # its own history, never the sites' version table
    finally:
        engine.dispose()


# --- SQLite -----------------------------------------------------------------------------------------------------

@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'witness.db'}"


@pytest.fixture
def witness(url):
    w = open_witness(url, clock=lambda: 1000.0)
    yield w
    w.close()


def _raw_sql(path: Path):
    def run(statement: str) -> None:
        db = sqlite3.connect(path)
        try:
            db.execute(statement)
            db.commit()
        finally:
            db.close()
    return run


def test_initialise_once(witness):
    check_initialise_once(witness)


def test_promote_race_between_threads_has_one_winner(witness):
    check_promote_race_has_one_winner(witness)


def _promote_in_process(url: str, site: str, expected: int, start_at: float, out) -> None:
    w = open_witness(url)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        out.put(("won", w.promote(site, expected).epoch))
    except StaleEpoch:
        out.put(("stale", None))
    finally:
        w.close()


def test_promote_race_between_processes_has_one_winner(witness, url):
    witness.initialise("A")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 4.0  # every process imported and open before the start line
    procs = [ctx.Process(target=_promote_in_process, args=(url, f"P{i}", 1, start_at, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(kind for kind, _ in results) == ["stale", "stale", "stale", "won"]
    assert witness.state().epoch == 2 and witness.state().primary_site.startswith("P")


def test_promote_is_compare_and_set(witness):
    check_promote_is_compare_and_set(witness)


def test_lease_is_renewed_only_by_the_primary_under_the_current_epoch(witness):
    check_lease(witness)


def test_a_failover_promotion_is_refused_while_the_lease_is_held(witness):
    check_promote_requires_an_expired_lease_when_asked(witness)


def test_journal_is_append_only_and_ordered_under_concurrent_appenders(witness, tmp_path):
    check_journal(witness, _raw_sql(tmp_path / "witness.db"))


def test_audit_lists_newest_first(witness):
    check_audit(witness)


def test_schema_is_migrated_by_its_own_alembic_history(witness, url):
    check_schema_matches_the_tables(url)
    assert witness.migrate() is False  # already at the newest revision: nothing runs twice


def test_a_fresh_witness_opened_by_many_at_once_is_migrated_once(url):
    barrier, opened, errors = threading.Barrier(6), [], []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(open_witness(url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 6
    assert opened[0].initialise("A").epoch == 1 and opened[5].state().primary_site == "A"
    for w in opened:
        w.close()


def test_relative_paths_resolve_against_the_root(tmp_path):
    w = open_witness("sqlite:///var/w.db", root=tmp_path)
    w.close()
    assert (tmp_path / "var" / "w.db").exists()


def test_a_locked_store_is_unavailable_with_a_clear_message(witness, tmp_path):
    holder = sqlite3.connect(tmp_path / "witness.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        quick = open_witness(f"sqlite:///{tmp_path / 'witness.db'}", migrate=False, busy_timeout_s=0.05,
                             retry_budget_s=0.3)
        started = time.monotonic()
        with pytest.raises(WitnessUnavailable, match=r"witness \(sqlite:///.*\) is unavailable while promoting "
                                                     r"site B: database is locked"):
            quick.promote("B", 0)
        assert time.monotonic() - started < 5
        quick.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert witness.promote("B", 0).epoch == 1  # usable again once the lock is gone


def test_a_store_that_cannot_be_created_is_unavailable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WitnessUnavailable, match="cannot create its folder"):
        open_witness(f"sqlite:///{blocker / 'witness.db'}")


def test_unknown_schemes_are_refused():
    with pytest.raises(ValueError, match="no witness backend for 'mysql'"):
        open_witness("mysql://x/y")
    with pytest.raises(ValueError, match="needs a file"):
        open_witness("sqlite:///:memory:")
