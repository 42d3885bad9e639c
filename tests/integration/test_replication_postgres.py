"""PostgreSQL → PostgreSQL replication through logical decoding (wal2json), with real Ray apply workers."""
from __future__ import annotations

import time

import pytest

from tests.integration.replica import Intake, Stream, pg_site_pair

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_pair(pg_cluster, tmp_path, org, ray_session):
    primary, standby_url = pg_site_pair(pg_cluster, tmp_path, org, "repl", 3000)
    stream = Stream(primary.url, standby_url)
    yield pg_cluster, primary, stream
    stream.close()
    stream.source.drop_slot(missing_ok=True)


def test_snapshot_then_stream_converge_under_concurrent_intake(pg_pair, tariff, rules):
    _cluster, primary, stream = pg_pair
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    intake.run_batches(5)
    intake.start(30, pause_s=0.01)
    stream.open().start()
    stream.run_in_background()
    intake.join()
    stream.catch_up()
    report = stream.verify()
    assert report.ok, "\n".join(report.summary())
    assert report.table("declarations").rows == intake.done


def test_cut_connections_are_retried_and_nothing_is_lost(pg_pair, tariff, rules):
    cluster, primary, stream = pg_pair
    stream.open().start()
    stream.run_in_background()
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    intake.start(30, pause_s=0.02)
    database = primary.url.rsplit("/", 1)[1]
    cut, deadline = 0, time.monotonic() + 3.0
    while time.monotonic() < deadline:  # cut every busy connection to the primary, mid-query, for a while
        cut += len(cluster.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND state = 'active' AND (query ILIKE %s OR query ILIKE %s)",
            (database, "%pg_logical_slot%", "START_REPLICATION%")))
        time.sleep(0.01)
    intake.join()
    stream.catch_up(timeout_s=120)
    report = stream.verify()
    errors = sum(s.value for m in stream.replicator.metrics.apply_errors.collect() for s in m.samples
                 if s.name.endswith("_total"))
    assert report.ok, "\n".join(report.summary())
    assert report.table("declarations").rows == intake.done
    assert cut >= 1 and errors >= 1, "the cut connections were felt and retried"
