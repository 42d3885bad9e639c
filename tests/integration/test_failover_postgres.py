"""The failover runbook on PostgreSQL, after kill -9 of the primary's processes under load: sites A and B and the
witness each in a database of the suite's throwaway cluster, A served by its own `standbyctl serve` process with a
short lease, a replicator process A → B (logical decoding from A's slot), declarants writing through the front.

The replicator is paused for a second (a lost tail), A's serve process group and the replicator are SIGKILLed, and
A's database stops accepting connections (ALLOW_CONNECTIONS false, its sessions ended: as unreadable as a cluster
that is down, without stopping the cluster the other databases live in). Once A's lease has expired the failover
runs: B primary at epoch 2, writes routed to B, the run's report not exact and saying why. With A's database
accepting connections again, `standbyctl failover report RUN_ID` reads the lost tail from A's slot and it equals
the client ledger (tests/integration/test_failover.py's comparison)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import ray
from sqlalchemy import create_engine, text

from standby.domain.states import IntakeState, SiteRole
from tests.conftest import REPO
from tests.integration.switchover_rig import Traffic, build_rig, pause_replicators
from tests.integration.test_failover import (CLIENTS, LEASE, assert_lost_matches_ledger, done_failover,
                                             failover_args, kill_primary_site, report_cli, run_report, site_rows,
                                             wait_lease)
from tests.pg_fixtures import pg_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.ray]


@pytest.fixture
def names():
    return {part: f"fo_{uuid.uuid4().hex[:8]}_{part}" for part in ("a", "b", "witness")}


@pytest.fixture
def rig(tmp_path, org, ray_session, pg_cluster, names):  # noqa: F811
    urls = {part: pg_cluster.create_database(name) for part, name in names.items()}
    rig = None
    try:
        rig = build_rig(tmp_path, org, enterprises_count=300, site_urls={"A": urls["a"], "B": urls["b"]},
                        witness_url=urls["witness"], ray_address=ray.get_runtime_context().gcs_address,
                        serve_as_process=("A",), front_hold_s=120, lease=LEASE)
        yield rig
    finally:
        if rig is not None:
            allow_connections(pg_cluster, names["a"], True)
            rig.close()
        for name in names.values():
            if pg_cluster.is_running():
                pg_cluster.drop_database(name)


def allow_connections(cluster, database: str, allow: bool) -> None:
    admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allow else "false"}'))
            if not allow:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db "
                                  "AND pid <> pg_backend_pid()"), {"db": database})
    finally:
        admin.dispose()


def test_failover_on_postgres_lists_exactly_what_clients_were_told_and_b_lacks(
        rig, tariff, pg_cluster, names):  # noqa: F811
    assert all(rig.settings.database_url(s).startswith("postgresql") for s in ("A", "B"))
    wait_lease(rig, expired=False)
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff, clients=CLIENTS).start()
    try:
        time.sleep(1.5)
        pause_replicators(rig, "A-to-B")  # B falls behind: a lost tail
        time.sleep(1.0)
        kill_primary_site(rig)
        allow_connections(pg_cluster, names["a"], False)
        wait_lease(rig, expired=True)
        run = subprocess.run([sys.executable, "-m", "standbyctl.cli", *failover_args(rig)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        time.sleep(1.0)  # B takes writes through the front
    finally:
        ledger = traffic.stop()
    state = rig.witness().state()
    assert (state.primary_site, state.epoch) == ("B", 2)
    b = rig.control("B")
    assert (b.role, b.intake_state, b.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, 2)
    assert any(n.startswith("2") for n in ledger.acknowledged), "the front routed new writes to B (site digit 2)"

    run_id = done_failover(rig)
    during = run_report(rig, run_id)
    assert not during["exact"] and "accepting connections" in during["reason"], during
    refused = report_cli(rig, run_id)
    assert refused.returncode == 1 and not json.loads(refused.stdout)["exact"], refused.stderr

    allow_connections(pg_cluster, names["a"], True)
    answer = report_cli(rig, run_id)
    assert answer.returncode == 0, answer.stderr
    assert_lost_matches_ledger(json.loads(answer.stdout), ledger.acknowledged, site_rows(rig, "A"),
                               site_rows(rig, "B"))
