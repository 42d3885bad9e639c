"""replication.progress on real databases: the committed position is one a caught-up standby reaches, waiting for it
returns once applied, and a stopped stream is reported as not caught up (fake clock: no wall-clock assertions)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, update

from replication.progress import NotCaughtUp, applied_position, caught_up, committed_position, wait_until_applied
from standby.store.engine import make_engine
from standby.store.schema import change_log, declarations, site_control
from tests.conftest import make_site_db
from tests.integration.replica import Intake, Stream, make_standby


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def count(url: str, table) -> int:
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def pair(tmp_path, org, ray_session):
    primary = make_site_db(tmp_path, org, enterprises_count=500)
    standby_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(standby_url)
    stream = Stream(primary.url, standby_url)
    stream.open().start()
    standby = make_engine(standby_url, writer=False)
    yield primary, stream, standby
    standby.dispose()
    stream.close()


def test_a_caught_up_standby_has_applied_the_committed_position_and_the_wait_returns_it(pair, tariff, rules):
    primary, stream, standby = pair
    Intake(primary.url, primary.active_enterprises(100), tariff, rules).run_batches(4)
    target = committed_position(stream.source)
    assert applied_position(standby, stream.stream) < target
    applied = stream.catch_up()  # steps the replicator between looks
    assert applied >= target and count(stream.standby_url, declarations) == count(primary.url, declarations)
    while stream.replicator.step():
        pass
    # Nothing committed since: the committed position is exactly where the standby is, and stays reachable.
    assert committed_position(stream.source) == applied_position(standby, stream.stream)
    clock = FakeClock()
    assert wait_until_applied(stream.source, standby, stream.stream, timeout_s=1, clock=clock,
                              sleep=clock.sleep) == applied_position(standby, stream.stream)


def test_the_committed_position_counts_only_replicated_changes(pair, tariff, rules):
    primary, stream, standby = pair
    stream.catch_up()
    engine = make_engine(primary.url)
    with engine.begin() as conn:  # a logged row of a table this source does not carry
        conn.execute(change_log.insert().values(table_name="not_replicated", op="insert", pk="{}", row="{}", at=0.0,
                                                txid=0))
    engine.dispose()
    assert caught_up(applied_position(standby, stream.stream), committed_position(stream.source))
    assert stream.source.head() > applied_position(standby, stream.stream), "head() counts it: lag only"


def test_a_stopped_stream_is_not_caught_up_and_says_how_far_it_is(pair, tariff, rules):
    primary, stream, standby = pair
    stream.catch_up()
    before = applied_position(standby, stream.stream)
    Intake(primary.url, primary.active_enterprises(100), tariff, rules).run_batches(2)
    clock = FakeClock()
    with pytest.raises(NotCaughtUp) as err:
        wait_until_applied(stream.source, standby, stream.stream, timeout_s=2.0, clock=clock, sleep=clock.sleep)
    assert err.value.applied == before and err.value.target == committed_position(stream.source) > before
    assert "A-to-B" in str(err.value) and str(err.value.target) in str(err.value)
    assert clock.now >= 2.0


@pytest.mark.postgres
def test_postgres_committed_position_is_reached_by_a_caught_up_standby_without_another_commit(
        pg_cluster, tmp_path, org, ray_session, tariff, rules):
    names = [f"prog_{uuid.uuid4().hex[:8]}_{side}" for side in ("a", "b")]
    for name in names:
        pg_cluster.create_database(name)
    primary = make_site_db(tmp_path, org, enterprises_count=500, url=pg_cluster.url(names[0]))
    make_standby(pg_cluster.url(names[1]))
    stream = Stream(primary.url, pg_cluster.url(names[1]))
    standby = make_engine(stream.standby_url, writer=False)
    try:
        stream.open().start()
        # synchronous_commit=off on this cluster: the committed position must include commits not yet flushed.
        Intake(primary.url, primary.active_enterprises(100), tariff, rules).run_batches(3)
        stream.catch_up()
        assert count(stream.standby_url, declarations) == count(primary.url, declarations) == 150
        while stream.replicator.step():
            pass
        engine = make_engine(primary.url)
        for i in range(5):  # WAL that is not a replicated change: the WAL position moves on, the committed one not
            with engine.begin() as conn:  # flushed, so the WAL write position surely moves past them
                conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
                conn.execute(update(site_control).values(updated_at=float(i)))
        engine.dispose()
        applied = applied_position(standby, stream.stream)
        assert stream.source.head() > applied, "the WAL position is out of reach (the bug of head())"
        assert committed_position(stream.source) == applied
        clock = FakeClock()
        assert wait_until_applied(stream.source, standby, stream.stream, timeout_s=1, clock=clock,
                                  sleep=clock.sleep) == applied
    finally:
        standby.dispose()
        stream.close()
        stream.source.drop_slot(missing_ok=True)
