"""SQLite → SQLite replication with real Ray apply workers: snapshot, streaming, resume, lag, refusals."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, select

from replication.errors import PermanentApplyError, SchemaMismatch
from replication.replicator import partition_of
from replication.sources import check_revisions
from standby.store.engine import make_engine
from standby.store.migrate import head_revision, upgrade
from standby.store.schema import change_log, declarations, replication_state
from tests.conftest import make_site_db
from tests.integration.replica import Intake, Stream, make_standby


@pytest.fixture
def pair(tmp_path, org, ray_session):
    primary = make_site_db(tmp_path, org, enterprises_count=4000)
    standby_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(standby_url)
    stream = Stream(primary.url, standby_url)
    yield primary, stream
    stream.close()


def test_snapshot_then_stream_converge_under_concurrent_intake(pair, tariff, rules):
    primary, stream = pair
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    intake.run_batches(5)  # history before the standby exists, copied by the snapshot
    intake.start(40, pause_s=0.01)  # and intake while the snapshot is taken and after
    replicator = stream.open()
    assert replicator.start() is True
    stream.run_in_background()
    intake.join()
    stream.catch_up()
    report = stream.verify()
    assert report.ok, "\n".join(report.summary())
    assert report.table("declarations").rows == intake.done == 45 * 50
    assert stream.replicator.metrics.changes_applied._value.get() > 0


def test_a_stopped_stream_resumes_exactly_where_it_stopped(pair, tariff, rules):
    primary, stream = pair
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    stream.open().start()
    intake.run_batches(10)
    stream.replicator.step()  # part of the way
    position = stream.replicator.applied_position
    stream.close()
    intake.run_batches(10)
    again = Stream(primary.url, stream.standby_url)
    try:
        assert again.open().start() is False, "a stream with stored positions resumes; it does not snapshot again"
        assert again.replicator.applied_position == position
        again.catch_up()
        report = again.verify()
        assert report.ok, "\n".join(report.summary())
    finally:
        again.close()


def test_lag_in_position_and_seconds_moves_with_the_intake(pair, tariff, rules):
    primary, stream = pair
    replicator = stream.open()
    replicator.start()
    replicator.o.window = 200
    Intake(primary.url, primary.active_enterprises(300), tariff, rules).run_batches(20)
    replicator.step()
    behind = replicator.metrics.lag_positions._value.get()
    assert behind > 0, "a backlog shows as lag in positions"
    stream.catch_up()
    replicator.step()
    assert replicator.metrics.lag_positions._value.get() == 0
    assert replicator.metrics.apply_delay._sum.get() > 0
    assert replicator.metrics.lag_seconds._value.get() < 60


def test_a_change_the_standby_refuses_stops_the_stream_naming_it(pair, tariff, rules):
    primary, stream = pair
    replicator = stream.open()
    replicator.start()
    before = replicator.applied_position
    engine = make_engine(primary.url)
    with engine.begin() as conn:  # a change no standby can apply: a declaration without its required columns
        conn.execute(insert(change_log).values(table_name="declarations", op="insert",
                                               pk=json.dumps({"base": "19999999999"}),
                                               row=json.dumps({"base": "19999999999", "number": None}),
                                               at=0.0, txid=0))
    Intake(primary.url, primary.active_enterprises(50), tariff, rules).run_batches(1)
    with pytest.raises(PermanentApplyError) as err:
        replicator.step()
    message = str(err.value)
    assert "declarations" in message and "19999999999" in message and "position" in message
    bad_part = partition_of(err.value.change, stream.partitions)
    standby = make_engine(stream.standby_url, writer=False)
    with standby.connect() as conn:
        assert conn.execute(select(declarations).where(declarations.c.base == "19999999999")).first() is None
        positions = dict(conn.execute(select(replication_state.c.part, replication_state.c.position)).all())
    # The bad change's partition applied nothing of the window (one transaction); the stream as a whole has not
    # moved past the change, and trying again stops on the same change: it is never skipped.
    assert positions[bad_part] == before and replicator.applied_position == before
    with pytest.raises(PermanentApplyError) as again:
        replicator.step()
    assert again.value.change == err.value.change
    engine.dispose()
    standby.dispose()


def test_replication_refuses_mismatched_schema_revisions(tmp_path, org):
    primary = make_site_db(tmp_path, org, enterprises_count=100)
    old = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(old, "0001")
    with pytest.raises(SchemaMismatch, match=f"{head_revision()}.*0001"):
        check_revisions(make_engine(primary.url), make_engine(old))
