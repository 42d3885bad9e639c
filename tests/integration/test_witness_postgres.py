"""The witness on a real PostgreSQL (a fresh database per test): the same contract checks as on SQLite, plus what is
PostgreSQL's own: SELECT ... FOR UPDATE under racing processes, and a server that does not answer."""
from __future__ import annotations

import multiprocessing
import socket
import time

import pytest
from sqlalchemy import create_engine, text

from cutover.witness import StaleEpoch, WitnessUnavailable, open_witness
from cutover.witness.postgres import psycopg_url
from tests.integration.test_witness_sqlite import (
    check_audit,
    check_initialise_once,
    check_journal,
    check_lease,
    check_promote_is_compare_and_set,
    check_promote_requires_an_expired_lease_when_asked,
    check_promote_race_has_one_winner,
    check_schema_matches_the_tables,
)
from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres


@pytest.fixture
def witness(pg_url):  # noqa: F811
    w = open_witness(pg_url, clock=lambda: 1000.0)
    yield w
    w.close()


def _raw_sql(url: str):
    def run(statement: str) -> None:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()
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


def test_promote_race_between_processes_has_one_winner(witness, pg_url):  # noqa: F811
    witness.initialise("A")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 4.0
    procs = [ctx.Process(target=_promote_in_process, args=(pg_url, f"P{i}", 1, start_at, out)) for i in range(4)]
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


def test_journal_is_append_only_and_ordered_under_concurrent_appenders(witness, pg_url):  # noqa: F811
    check_journal(witness, _raw_sql(pg_url))


def test_audit_lists_newest_first(witness):
    check_audit(witness)


def test_schema_is_migrated_by_its_own_alembic_history(witness, pg_url):  # noqa: F811
    check_schema_matches_the_tables(pg_url)
    assert witness.migrate() is False


def test_a_server_that_does_not_answer_is_unavailable(pg_url):  # noqa: F811
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://witness:secret-pw@127.0.0.1:{port}/witness"
    started = time.monotonic()
    with pytest.raises(WitnessUnavailable) as caught:
        open_witness(url, retry_budget_s=1.0, connect_timeout_s=1)
    message = str(caught.value)
    assert "is unavailable while migrating its schema" in message and f"127.0.0.1:{port}" in message
    assert "secret-pw" not in message and time.monotonic() - started < 10


def test_plain_postgresql_urls_mean_psycopg_3():
    assert psycopg_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert psycopg_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert psycopg_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
