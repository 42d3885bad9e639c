"""kill -9 of the replicator process, or of its apply workers, while it streams from PostgreSQL (its walsender holds
the slot, windows are read ahead and partly applied): every restart resumes from the stored positions and the slot,
and the standby converges with nothing lost or doubled (verify finds nothing)."""
from __future__ import annotations

import random
import signal

import pytest
from sqlalchemy import func, select

from replication.pg_source import PgChangeSource
from replication.sources import slot_name
from standby.store.engine import make_engine
from standby.store.schema import declarations
from tests.fault.test_replication_kill import (_config, finish_and_verify, kill_apply_workers_mid_stream,
                                              kill_at_random_points)
from tests.integration.replica import Intake, pg_site_pair

pytestmark = [pytest.mark.fault, pytest.mark.postgres]


def test_kill_9_of_the_replicator_mid_stream_on_postgres(pg_cluster, tmp_path, org, tariff, rules, ray_session):
    primary, standby_url = pg_site_pair(pg_cluster, tmp_path, org, "kill", 2000)
    config = _config(tmp_path, primary.url, standby_url)
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    intake.start(40, pause_s=0.02)
    kills = []
    try:
        kills = kill_at_random_points(config, standby_url, random.Random(12), times=2, longest_s=1.0)
        intake.join()
        report = finish_and_verify(config, primary.url, standby_url)  # its start may wait for the slot a moment
    finally:
        intake.join()
        source = PgChangeSource(primary.url, slot_name("A", "B"))
        source.drop_slot(missing_ok=True)  # ends a walsender a killed replicator may have left behind
        source.close()
    assert kills == [(-signal.SIGKILL, True)] * 2, kills
    assert report.ok, "\n".join(report.summary())
    engine = make_engine(standby_url, writer=False)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(declarations)).scalar() == intake.done
    engine.dispose()


def test_kill_9_of_apply_workers_mid_stream_on_postgres(pg_cluster, tmp_path, org, tariff, rules, ray_session):
    # On PostgreSQL a window's inserts reach the workers unbuilt (RowInsert) and are copied in: a worker killed
    # while it copies leaves nothing half-written, and the window sent again lands once.
    primary, standby_url = pg_site_pair(pg_cluster, tmp_path, org, "workers", 2000)
    try:
        kill_apply_workers_mid_stream(primary, standby_url, tariff, rules)
    finally:
        source = PgChangeSource(primary.url, slot_name("A", "B"))
        source.drop_slot(missing_ok=True)
        source.close()
