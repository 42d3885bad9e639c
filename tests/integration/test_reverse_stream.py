"""The replication side of a switchover, on SQLite and PostgreSQL: A -> B caught up; A frozen and fenced; the A -> B
stream finishes by itself and writes no heartbeat to A after; B promoted (sequences advanced); the reverse stream
B -> A prepared without a snapshot before B takes writes; B's writes reach A; A == B."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from sqlalchemy import func, insert, select

from replication.heartbeat import write_heartbeat
from replication.progress import applied_position, wait_until_applied
from replication.promotion import advance_sequences
from replication.replicator import StreamFinished
from replication.sources import open_source
from replication.streams import StreamConflict, prepare_stream, retire_stream
from replication.verify import verify
from standby.store import site
from standby.store.engine import make_engine
from standby.store.schema import audit_log, change_log, declarations, replication_heartbeat
from tests.conftest import REPO, make_site_db
from tests.integration.replica import Intake, Stream, make_standby, pg_site_pair


def scalar(url: str, stmt):
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as conn:
            return conn.execute(stmt).scalar()
    finally:
        engine.dispose()


def beats(url: str, source: str) -> int | None:
    return scalar(url, select(replication_heartbeat.c.counter).where(replication_heartbeat.c.source == source))


def add_audit(url: str, site_id: str, epoch: int, action: str) -> int:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:  # the id comes from the database's own generator
            return conn.execute(insert(audit_log).values(at=1.0, site_id=site_id, epoch=epoch, actor="test",
                                                         action=action).returning(audit_log.c.id)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sites(request, tmp_path, org, ray_session):
    """(A's SiteDb, B's url): A a seeded primary, B an empty standby."""
    if request.param == "sqlite":
        a = make_site_db(tmp_path, org, enterprises_count=500)
        b_url = f"sqlite:///{tmp_path / 'site-b.db'}"
        make_standby(b_url)
    else:
        a, b_url = pg_site_pair(request.getfixturevalue("pg_cluster"), tmp_path, org, "rev", 500)
    yield request.param, a, b_url
    for source_url, target_url, stream in ((a.url, b_url, "A-to-B"), (b_url, a.url, "B-to-A")):
        retire_stream(source_url, target_url, stream)  # drops the PostgreSQL slots


def switch_over_the_forward_stream(forward: Stream, a_engine, b_engine) -> int | None:
    """Freeze A, let B apply A's last committed position, fence A: the stream finishes by itself and A takes no
    heartbeat from then on. Returns A's heartbeat counter as the fence left it."""
    site.freeze(a_engine, "A", epoch=1, hold_s=5.0, hold_max=100)
    forward.catch_up()
    site.fence(a_engine, "A", epoch=2, primary_site="B")
    fenced_beats = beats(forward.primary_url, "A")
    forward._thread.join(timeout=120)
    assert not forward._thread.is_alive()
    finished = forward.result
    assert isinstance(finished, StreamFinished)
    assert finished.position == applied_position(b_engine, "A-to-B")
    assert finished.describe() == (f"source A is no longer primary (fenced at epoch 2); stream A-to-B finished "
                                   f"at position {finished.position}")
    assert write_heartbeat(a_engine, "A", 123.0) is not None, "a fenced site takes no heartbeat"
    forward.replicator.step()  # a retired source is never beaten again
    assert beats(forward.primary_url, "A") == fenced_beats
    return fenced_beats


def test_switchover_finishes_the_old_stream_and_reverses_it_without_a_snapshot(sites, tariff, rules):
    backend, a, b_url = sites
    tax_codes = a.active_enterprises(100)
    add_audit(a.url, "A", 1, "before")
    forward = Stream(a.url, b_url)
    reverse = Stream(b_url, a.url, source_site="B", target_site="A")
    a_engine, b_engine = make_engine(a.url), make_engine(b_url)
    try:
        # A -> B, caught up under intake.
        assert forward.open().start() is True
        Intake(a.url, tax_codes, tariff, rules).run_batches(3)
        forward.run_in_background()
        forward.catch_up()
        if backend == "sqlite":
            assert scalar(b_url, select(func.count()).select_from(change_log)) == 0, \
                "rows B got by replication are not captured as B's own changes"

        fenced_beats = switch_over_the_forward_stream(forward, a_engine, b_engine)

        # Promote B (generators past the replicated ids), fix the reverse start, then open B to writes.
        site.promote(b_engine, "B", epoch=2)
        moved = advance_sequences(b_engine)
        if backend == "postgres":
            assert moved["audit_log_id_seq"] == scalar(b_url, select(func.max(audit_log.c.id)))
        else:
            assert moved == {}, "SQLite's ids follow max(rowid); change_log's counter is never behind"
        assert advance_sequences(b_engine) == {}, "idempotent"
        start = prepare_stream(b_url, a.url, "B-to-A", 2)
        assert prepare_stream(b_url, a.url, "B-to-A", 2) == start, "a re-run gives the same start"
        site.resume(b_engine, "B", epoch=2)
        audit_id = add_audit(b_url, "B", 2, "after")  # no duplicate key on the promoted site
        intake = Intake(b_url, tax_codes, tariff, rules, site_id="B", site_digit=2, key_prefix="b")
        intake.run_batches(3)
        assert scalar(b_url, select(func.count()).select_from(declarations)) == 300
        if backend == "sqlite":
            assert scalar(b_url, select(func.count()).select_from(change_log)) > 0, "B captures its own writes"
        assert prepare_stream(b_url, a.url, "B-to-A", 2) == start, "after B's writes too: they are still held"
        with pytest.raises(StreamConflict, match="partitions"):
            prepare_stream(b_url, a.url, "B-to-A", 3)

        # The reverse stream's consumer starts late, from the prepared positions: no snapshot, nothing missed.
        assert reverse.open().start() is False
        assert reverse.replicator.applied_position == start
        reverse.catch_up()
        assert reverse.replicator.metrics.snapshot_rows._value.get() == 0
        report = verify(make_engine(b_url, writer=False), make_engine(a.url, writer=False), chunk_rows=500)
        assert report.ok, "\n".join(report.summary())
        assert report.table("declarations").rows == 300
        assert scalar(a.url, select(audit_log.c.action).where(audit_log.c.id == audit_id)) == "after"
        assert beats(a.url, "A") == fenced_beats, "nothing wrote A's heartbeat after the fence"
        if backend == "sqlite":
            assert scalar(a.url, select(func.count()).select_from(change_log)) == 0, \
                "what A applies from B is not captured as A's own changes"
    finally:
        reverse.close()
        forward.close()
        a_engine.dispose()
        b_engine.dispose()


def test_standbyctl_replicate_finishes_and_exits_0_once_its_source_is_fenced(tmp_path, org, tariff, rules):
    a = make_site_db(tmp_path, org, enterprises_count=300)
    b_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(b_url)
    config = tmp_path / "replicate.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path),
        "sites": {"A": {"site_digit": 1, "database_url": a.url, "http": {"port": 1}},
                  "B": {"site_digit": 2, "database_url": b_url, "http": {"port": 2}}},
        "ray": {"num_cpus": 2}}))
    Intake(a.url, a.active_enterprises(100), tariff, rules).run_batches(2)
    proc = subprocess.Popen([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "replicate", "--from",
                             "A", "--to", "B", "--metrics-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    source, a_engine, b_engine = open_source(a.url, "A", "B"), make_engine(a.url), make_engine(b_url, writer=False)
    try:
        wait_until_applied(source, b_engine, "A-to-B", timeout_s=180)
        site.freeze(a_engine, "A", epoch=1, hold_s=5.0, hold_max=10)
        site.fence(a_engine, "A", epoch=2, primary_site="B")
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        source.close()
        a_engine.dispose()
        b_engine.dispose()
    assert proc.returncode == 0, out
    assert "source A is no longer primary (fenced at epoch 2); stream A-to-B finished at position" in out, out
    assert applied_position(make_engine(b_url, writer=False), "A-to-B") is None, "the finished stream is retired"
    assert scalar(b_url, select(func.count()).select_from(declarations)) == 100
